"""`genlab list`: every registered dataset, noise schedule, sampler, architecture and family."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    """Add the `list` command."""
    subparsers.add_parser("list", help="list datasets, schedules, samplers, architectures and families",
                          description="List every registered dataset, noise schedule, sampler, architecture and "
                                      "family.")


def run(args) -> int:
    """Print the registries, one line per entry."""
    # lazy: the registries import torch (seconds); `genlab --help` must not
    from genlab.data.registry import describe_datasets
    from genlab.diffusion.samplers import SAMPLERS
    from genlab.diffusion.schedules import BETA_SCHEDULES
    from genlab.models.specs import FAMILY_SPECS
    from genlab.nn import ARCHITECTURES

    sections = {
        "datasets": describe_datasets(),
        "noise schedules": {name: fn.__doc__.strip().splitlines()[0] for name, fn in BETA_SCHEDULES.items()},
        "samplers": {name: fn.__doc__.strip().splitlines()[0] for name, fn in SAMPLERS.items()},
        "architectures": {name: (cls.__doc__ or "").strip().splitlines()[0] for name, cls in ARCHITECTURES.items()},
        "families": {name: (spec.__doc__ or "").strip().splitlines()[0] for name, spec in FAMILY_SPECS.items()},
    }
    for title, entries in sections.items():
        print(f"{title}:")
        width = max(len(k) for k in entries)
        for name, text in entries.items():
            print(f"  {name:<{width}}  {text}")
    return 0
