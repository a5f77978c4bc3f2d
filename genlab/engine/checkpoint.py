"""Safe, atomic checkpoints: tensors in safetensors, everything else in JSON, never pickle.

A checkpoint is a pair of files sharing one stem, ``<stem>.safetensors`` (every tensor of
the state, keyed by its "/"-joined key path) and ``<stem>.json`` (the rest of the state as a
tagged JSON tree, plus the format version, byte size and sha256 of the safetensors file).
Both are written to temporary names in the same folder, fsync'ed, then renamed into place,
the JSON last: a JSON that exists means its pair is complete, and a checksum that matches
means the weights are the ones that were written.

The state's encoding (tensors by key path, the rest as tagged JSON) is `state_codec.py`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from lightning.pytorch.plugins.io import CheckpointIO

from genlab.engine.state_codec import flatten_state, unflatten_state
from genlab.errors import CheckpointError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "SafeCheckpointIO",
    "checkpoint_name",
    "checkpoint_paths",
    "checkpoint_step",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_tensors",
    "prune_checkpoints",
    "remove_stale_temp_files",
    "save_checkpoint",
    "stale_temp_files",
    "verify_checkpoint",
]

logger = logging.getLogger("genlab")

FORMAT_NAME = "genlab-checkpoint"
FORMAT_VERSION = 1
_KNOWN_SUFFIXES = (".json", ".safetensors", ".ckpt")
_STEP_WIDTH = 9  # step-000000123: sorts by name up to a billion steps; sorting is by int anyway
_STEP_RE = re.compile(r"^step-(\d+)\.json$")
# the temporary names of save_checkpoint: .<stem>.<suffix>.<pid>.<8 hex>.tmp
_TMP_RE = re.compile(r"^\.step-\d+\.(json|safetensors)\.\d+\.[0-9a-f]+\.tmp$")
_HASH_CHUNK = 1 << 20  # bytes read at a time when checking a weights file's sha256
_HINT = "delete it or resume from an earlier checkpoint"

def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` for a stem, or a path ending in .json/.safetensors/.ckpt."""
    path = Path(path)
    if path.suffix in _KNOWN_SUFFIXES:
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def checkpoint_name(step: int) -> str:
    """The stem of the checkpoint of global step ``step``, e.g. ``step-000000123``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return f"step-{int(step):0{_STEP_WIDTH}d}"


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step in a checkpoint's name (the inverse of ``checkpoint_name``): step-000000123.json -> 123."""
    match = _STEP_RE.match(checkpoint_paths(path)[1].name)
    if match is None:
        raise ValueError(f"{path} is not named like a step checkpoint (step-<N>.json)")
    return int(match.group(1))


def _write_bytes(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist), write ``data``, flush and fsync; tests replace this."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (a no-op where the filesystem cannot sync folders)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write ``state`` atomically as the pair ``<path>.safetensors`` + ``<path>.json``.

    Both files go to temporary names in the same folder and are fsync'ed before anything is
    renamed, so a full disk never touches existing checkpoints; an existing JSON of the same
    stem is removed before its weights are replaced, and the new JSON appears last.

    Args:
        state: nested state, see ``flatten_state``.
        path: the stem (a trailing .json/.safetensors/.ckpt is ignored).

    Returns:
        The path of the JSON file.

    Raises:
        CheckpointError: the files cannot be written (disk full, unwritable folder...).
        TypeError: the state holds a value that cannot be saved.
    """
    tensors, meta = flatten_state(state)
    data = safetensors.torch.save(tensors)
    st_path, json_path = checkpoint_paths(path)
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "safetensors": {"file": st_path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "state": meta,
    }
    text = json.dumps(header, indent=1, allow_nan=False, ensure_ascii=False).encode("utf-8")
    token = f"{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp_st = st_path.with_name(f".{st_path.name}.{token}")
    tmp_json = json_path.with_name(f".{json_path.name}.{token}")
    try:
        st_path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(tmp_st, data)
        _write_bytes(tmp_json, text)
        json_path.unlink(missing_ok=True)  # a crash from here on leaves "no checkpoint", not a mismatched pair
        os.replace(tmp_st, st_path)
        _fsync_dir(st_path.parent)
        os.replace(tmp_json, json_path)
        _fsync_dir(json_path.parent)
    except BaseException as err:
        for tmp in (tmp_st, tmp_json):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(err, OSError):
            reason = err.strerror or str(err)
            raise CheckpointError(
                f"cannot write checkpoint {json_path}: {reason}; free space or choose another --out"
            ) from err
        raise
    return json_path


def _read_header(json_path: Path) -> dict:
    """Read and validate the JSON half of a pair (not yet the weights)."""
    if not json_path.is_file():
        raise CheckpointError(f"checkpoint {json_path} does not exist; check the path or list the checkpoints folder")
    try:
        header = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {json_path} is unreadable or not valid JSON ({err}); {_HINT}") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{json_path} is not a genlab checkpoint (no \"format\": \"{FORMAT_NAME}\"); {_HINT}")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {json_path} has format version {header.get('version')!r} but this genlab reads "
            f"version {FORMAT_VERSION}; use the genlab version that wrote it"
        )
    info = header.get("safetensors")
    if not isinstance(info, dict) or not isinstance(info.get("sha256"), str) or not isinstance(info.get("bytes"), int):
        raise CheckpointError(f"checkpoint {json_path} lacks the size and sha256 of its weights; {_HINT}")
    return header


def _verify(path: str | os.PathLike) -> tuple[Path, dict]:
    """Check a pair (JSON, version, weights size and sha256); return the weights path and header."""
    st_path, json_path = checkpoint_paths(path)
    header = _read_header(json_path)
    info = header["safetensors"]
    try:
        size = st_path.stat().st_size
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {json_path} is incomplete: its weights {st_path.name} are missing; {_HINT}"
        ) from err
    if size != info["bytes"]:
        raise CheckpointError(
            f"checkpoint weights {st_path} are truncated or altered ({size} bytes, expected {info['bytes']}); {_HINT}"
        )
    sha = hashlib.sha256()
    try:
        with open(st_path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                sha.update(chunk)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint weights {st_path}: {err.strerror or err}; {_HINT}") from err
    if sha.hexdigest() != info["sha256"]:
        raise CheckpointError(f"checkpoint weights {st_path} fail their sha256 check (corrupt or altered); {_HINT}")
    return st_path, header


def verify_checkpoint(path: str | os.PathLike) -> Path:
    """Check that a checkpoint pair is complete and intact; return its JSON path.

    Raises:
        CheckpointError: missing file, invalid JSON, unknown format version or bad checksum.
    """
    _verify(path)
    return checkpoint_paths(path)[1]


def _to_device(obj: Any, device: torch.device | None) -> Any:
    """Move every tensor of a nested state to ``device`` (None: leave on the CPU)."""
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_device(v, device) for v in obj)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = None) -> dict:
    """Verify and load a checkpoint pair written by ``save_checkpoint``.

    Args:
        path: the JSON file or the stem (or the .safetensors/.ckpt name).
        map_location: device for the tensors; None leaves them on the CPU.

    Raises:
        CheckpointError: missing file, invalid JSON, unknown format version or bad checksum.
    """
    st_path, header = _verify(path)
    try:
        tensors = safetensors.torch.load_file(st_path)
    except (OSError, safetensors.SafetensorError) as err:
        raise CheckpointError(f"cannot load checkpoint weights {st_path} ({err}); {_HINT}") from err
    state = unflatten_state(tensors, header["state"])
    return _to_device(state, None if map_location is None else torch.device(map_location))


def load_tensors(path: str | os.PathLike, prefix: str = "state_dict/", device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load only the tensors whose names start with ``prefix`` (stripped), e.g. model weights for sampling.

    Raises:
        CheckpointError: as ``load_checkpoint``, or no tensor starts with ``prefix``.
    """
    st_path, _ = _verify(path)
    try:
        with safetensors.safe_open(st_path, framework="pt", device=device) as f:
            out = {name[len(prefix):]: f.get_tensor(name) for name in f.keys() if name.startswith(prefix)}
    except (OSError, safetensors.SafetensorError) as err:
        raise CheckpointError(f"cannot load checkpoint weights {st_path} ({err}); {_HINT}") from err
    if not out:
        raise CheckpointError(f"checkpoint {st_path} holds no tensors under {prefix!r}; pass a checkpoint of a model")
    return out


# --------------------------------------------------------------------------- run folders


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The ``step-*.json`` files of ``folder``, oldest step first (none if the folder is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike) -> Path:
    """The JSON of the newest checkpoint in ``folder`` that verifies; corrupt newer ones are logged and skipped.

    Raises:
        CheckpointError: no checkpoint in ``folder`` verifies.
    """
    candidates = list_checkpoints(folder)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {folder}; train first or point to the run's checkpoints folder")
    skipped: list[str] = []
    for json_path in reversed(candidates):
        try:
            good = verify_checkpoint(json_path)
        except CheckpointError as err:
            skipped.append(f"{json_path.name} ({err})")
            continue
        for reason in skipped:  # warn only when falling back: otherwise the error below says it all
            logger.warning("skipping corrupt checkpoint %s", reason)
        return good
    raise CheckpointError(f"none of the {len(candidates)} checkpoints in {folder} is intact "
                          f"(newest: {skipped[0]}); start a new run")


def stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """The temporary files of ``save_checkpoint`` in ``folder``: left by a writer killed mid-save, or in use."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TMP_RE.match(p.name))


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete what killed writers left in ``folder`` (call it holding the run's lock: no live writer then).

    Returns:
        The deleted paths.
    """
    removed = stale_temp_files(folder)
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _remove_pair(json_path: Path) -> None:
    """Delete both files of a pair, the JSON first so that a half-deleted pair reads as absent."""
    st_path, json_path = checkpoint_paths(json_path)
    json_path.unlink(missing_ok=True)
    st_path.unlink(missing_ok=True)


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoint pairs of ``folder``, never the newest valid one.

    Weights files without a JSON (left by a crash during a save) older than the newest
    checkpoint are deleted too.

    Returns:
        The JSON paths of the deleted pairs.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    pairs = list_checkpoints(folder)
    kept = set(pairs[max(0, len(pairs) - keep):]) if keep else set()
    for json_path in reversed(pairs):  # protect the newest checkpoint that would resume
        try:
            kept.add(verify_checkpoint(json_path))
            break
        except CheckpointError:
            continue
    removed = [p for p in pairs if p not in kept]
    for json_path in removed:
        _remove_pair(json_path)
    if pairs:
        newest = int(_STEP_RE.match(pairs[-1].name).group(1))
        for st_path in Path(folder).glob("step-*.safetensors"):
            m = re.fullmatch(r"step-(\d+)\.safetensors", st_path.name)
            if m and int(m.group(1)) < newest and not checkpoint_paths(st_path)[1].exists():
                st_path.unlink(missing_ok=True)
    return removed


# --------------------------------------------------------------------------- Lightning


def _map_location_device(map_location: Any) -> torch.device | None:
    """The target device of a ``torch.load``-style ``map_location``; None keeps tensors on the CPU."""
    if map_location is None or callable(map_location):  # Lightning's default is an identity function
        return None
    if isinstance(map_location, dict):
        target = map_location.get("cpu")
        return None if target is None else torch.device(target)
    return torch.device(map_location)


class SafeCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` that writes genlab's atomic safetensors + JSON pairs instead of pickles.

    A path such as ``runs/x/step-3.ckpt`` becomes the pair ``step-3.safetensors`` +
    ``step-3.json``; loading accepts the same path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` atomically as the pair named by ``path``."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        save_checkpoint(checkpoint, Path(path))

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Verify and load the pair named by ``path`` (nothing is unpickled, so ``weights_only`` is moot)."""
        return load_checkpoint(Path(path), map_location=_map_location_device(map_location))

    def remove_checkpoint(self, path: Any) -> None:
        """Delete both files of the pair named by ``path``, if present."""
        _remove_pair(Path(path))
