"""Evaluation: locally trained feature networks, image and 2-D metrics, floors, the `genlab eval` command.

Submodules: `features` (evaluator networks), `cache` (their on-disk cache), `metrics` (image
metrics on features), `toy` (2-D metrics), `evaluate` (samples -> metrics with floors),
`command` (the CLI). Nothing heavy is imported here, so `genlab --help` stays instant.
"""

from __future__ import annotations

_LAZY = {
    "evaluate_samples": "genlab.eval.evaluate",
    "evaluate_run": "genlab.eval.evaluate",
    "append_metrics_csv": "genlab.eval.evaluate",
    "get_evaluator": "genlab.eval.features",
    "Evaluator": "genlab.eval.features",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    """Import the public names on first use (PEP 562), keeping `import genlab.eval` free of torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genlab.eval' has no attribute {name!r}")
