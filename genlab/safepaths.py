"""Paths built from names found in files stay inside their folder.

Two kinds of paths reach genlab, and they are treated differently:

- **the user's explicit choice** on the command line: ``--out``, ``--resume RUN_DIR``, ``RUN_DIR``,
  ``CONFIG``, ``--samples FILE``, ``data.name=folder:PATH``. Taken as given, wherever they point
  (an absolute path, ``..``, a symbolic link to another disk): the user typed them.
- **names read from files**, or built from them: the ``name:`` of a config (the default run
  folder ``runs/<name>``), checkpoint, sample and eval file names inside a run folder, class
  sub-folder names of an image folder (read only, used as labels). These must stay inside their
  folder: a name holds no ``/``, is not ``.`` or ``..`` and is not hidden (``RunConfig.name``'s
  pattern, ``safe_join`` here), and genlab never writes through a symbolic link inside a run
  folder that leads out of it (``check_run_links``). A run folder handed over by someone else
  could carry ``samples -> ~/.ssh`` or ``eval.csv -> ~/.bashrc``; resuming, evaluating or
  training into it is then refused before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from genlab.errors import CheckpointError, ConfigError

__all__ = ["check_run_links", "escaping_links", "inside", "safe_join"]


def inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, with every symbolic link resolved, is ``folder`` or lies under it."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def safe_join(folder: str | os.PathLike, name: str, what: str = "name") -> Path:
    """``folder / name`` for a single, visible path component ``name``; else a ConfigError naming ``what``."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"{what} {name!r} must be one visible file name (no '/', '..' or leading '.'), "
                          f"so that it stays inside {folder}")
    return Path(folder) / name


def escaping_links(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Every symbolic link under ``folder`` (not followed) whose target lies outside ``folder``.

    Dangling links count too: writing through one would create its target.

    Returns:
        ``(link, resolved target)`` pairs, in walk order.
    """
    root = Path(folder).resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    found.append((path, target))
    return found


def check_run_links(run_dir: str | os.PathLike) -> None:
    """Refuse a run folder holding a symbolic link that leads out of it (before writing anything into it).

    Raises:
        CheckpointError: naming the first such link and its target.
    """
    links = escaping_links(run_dir)
    if links:
        link, target = links[0]
        more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
        raise CheckpointError(
            f"run folder {run_dir} holds a symbolic link {link.relative_to(Path(run_dir).resolve())} -> {target}"
            f"{more} that leads outside it; genlab writes only inside the run folder: remove the link"
        )
