"""The on-disk cache of trained evaluator networks: where it lives, how entries are keyed,
written and verified.

An entry is two files in `<cache>/evaluators/`: `<stem>.safetensors` (the weights) and
`<stem>.json` (the config it was trained with, a fingerprint of its training data, its
held-out accuracy and the sha256 of its weights). The JSON is written last, so its presence
marks a complete entry. On reading, every check must pass (JSON parses, config and data
fingerprint equal the ones asked for, weights load and hash to the recorded sha256); any
failure is reported as a reason string and the caller retrains, never trusting the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

logger = logging.getLogger("genlab.eval")

CACHE_ENV = "GENLAB_CACHE"
XDG_ENV = "XDG_CACHE_HOME"
EVALUATOR_SUBDIR = "evaluators"
# Sixteen hex digits (64 bits) of the config hash name a cache entry: collisions are
# negligible for the handful of evaluators one machine holds, and the names stay readable.
KEY_HEX_DIGITS = 16


def cache_root() -> Path:
    """The user cache folder: `$GENLAB_CACHE`, else `$XDG_CACHE_HOME/genlab`, else `~/.cache/genlab`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get(XDG_ENV):
        return Path(os.environ[XDG_ENV]).expanduser() / "genlab"
    return Path.home() / ".cache" / "genlab"


def evaluator_dir(root: Path | None = None) -> Path:
    """The folder of cached evaluator networks under `root` (default `cache_root()`)."""
    return (cache_root() if root is None else Path(root)) / EVALUATOR_SUBDIR


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal objects give equal strings (and hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def cache_key(config: dict, data_fingerprint: str) -> str:
    """Hash of everything that determines the trained weights: the config and the training data.

    Args:
        config: JSON-able training config (architecture, resolution, seed, epochs, version...).
        data_fingerprint: `tensor_fingerprint` of the training images and labels.

    Returns:
        The first KEY_HEX_DIGITS hex digits of sha256 over the canonical JSON of both.
    """
    text = canonical_json({"config": config, "data": data_fingerprint})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_HEX_DIGITS]


def tensor_fingerprint(tensors: dict[str, Tensor | None]) -> str:
    """sha256 over named tensors (name, dtype, shape and bytes), independent of any file format.

    Args:
        tensors: name -> tensor (or None, hashed as absent); hashed in sorted name order.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        digest.update(name.encode("utf-8") + b"\0")
        if value is None:
            digest.update(b"none\0")
            continue
        value = value.detach().cpu().contiguous()
        digest.update(f"{value.dtype}{tuple(value.shape)}\0".encode("utf-8"))
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, then rename: a crash leaves the old file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class CacheEntry:
    """A verified cache entry: the weights and what the JSON recorded about them."""

    state: dict[str, Tensor]
    meta: dict


def entry_paths(folder: Path, stem: str) -> tuple[Path, Path]:
    """The (weights, json) paths of the entry named `stem` in `folder`."""
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def write_entry(folder: Path, stem: str, state: dict[str, Tensor], meta: dict) -> Path:
    """Store `state` and `meta` (plus the weights' sha256) as entry `stem`; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    weights_path, json_path = entry_paths(folder, stem)
    state = {name: t.detach().cpu().contiguous() for name, t in state.items()}
    meta = {**meta, "weights_sha256": tensor_fingerprint(state)}
    _write_atomic(weights_path, save(state))
    _write_atomic(json_path, json.dumps(meta, indent=2, sort_keys=True).encode("utf-8"))
    return json_path


def store_entry(folder: Path, stem: str, state: dict[str, Tensor], meta: dict) -> None:
    """`write_entry`, warning instead of failing where the cache cannot be written: a read-only home must not
    stop evaluation, only its caching."""
    try:
        write_entry(folder, stem, state, meta)
    except OSError as err:
        logger.warning("cannot write the evaluator cache in %s (%s); set GENLAB_CACHE to a writable folder",
                       folder, err)


def read_entry(folder: Path, stem: str, expect: dict) -> tuple[CacheEntry | None, str]:
    """Load and verify entry `stem`; returns (entry, "") or (None, why it cannot be trusted).

    Args:
        folder: the evaluator cache folder.
        stem: the entry name (dataset slug and cache key).
        expect: key -> value pairs the JSON must hold exactly (config, data fingerprint).

    Returns:
        (CacheEntry, "") when every check passes; (None, "missing") when no entry exists;
        (None, reason) for a corrupt or mismatched entry.
    """
    weights_path, json_path = entry_paths(folder, stem)
    if not json_path.exists() and not weights_path.exists():
        return None, "missing"
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"unreadable JSON {json_path} ({type(err).__name__})"
    if not isinstance(meta, dict):
        return None, f"JSON {json_path} is not an object"
    for key, value in expect.items():
        if meta.get(key) != value:
            return None, f"{json_path} records a different {key}"
    try:
        state = load(weights_path.read_bytes())
    except (OSError, SafetensorError, ValueError, RuntimeError) as err:
        return None, f"unreadable weights {weights_path} ({type(err).__name__}: {err})"
    recorded = meta.get("weights_sha256")
    actual = tensor_fingerprint(state)
    if recorded != actual:
        return None, f"checksum mismatch in {weights_path} (recorded {str(recorded)[:12]}, found {actual[:12]})"
    return CacheEntry(state=state, meta=meta), ""
