"""The encoding of a checkpoint's state: tensors to a flat name -> tensor dict, the rest to tagged JSON.

JSON encoding of the state (``flatten_state``), chosen so a human can still read it:

- ``None``, ``bool``, ``int``, ``str`` and finite ``float`` are themselves (``json`` keeps
  ``1`` and ``1.0`` apart and writes floats with ``repr``, which round-trips exactly);
- a list is a JSON array; a dict whose keys are all ``str`` and none starts with ``$`` is a
  JSON object;
- everything else is a one-key object whose key starts with ``$``: ``{"$tensor": name}``,
  ``{"$ndarray": name}``, ``{"$tuple": [...]}``, ``{"$dict": [[key, value], ...]}`` (int or
  other non-str keys), ``{"$float": "<IEEE-754 bits in hex>"}`` (inf, nan),
  ``{"$dtype": "bfloat16"}``, ``{"$size": [2, 3]}`` (``torch.Size``).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch

from genlab.errors import CheckpointError

_HINT = "delete it or resume from an earlier checkpoint"

# dtypes safetensors can store (its format has no complex128, quantised or bit-packed types).
_SAFE_DTYPES = frozenset(
    getattr(torch, name)
    for name in (
        "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
        "uint8", "bool", "complex64", "uint16", "uint32", "uint64",
        "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
    )
    if hasattr(torch, name)
)


# --------------------------------------------------------------------------- flatten


def _path_str(path: tuple) -> str:
    """The "/"-joined key path of a value, as used for tensor names and in error messages."""
    return "/".join(str(k) for k in path) if path else "<root>"


def _float_bits(x: float) -> str:
    """IEEE-754 binary64 bits of ``x`` in hex, which keeps the sign and payload of a nan."""
    return struct.pack(">d", x).hex()


class _Flattener:
    """One pass over a state tree that collects its tensors and builds its JSON tree."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._storages: set[tuple[str, int]] = set()
        self._stack: set[int] = set()  # ids of the containers being visited: cycle detection

    def tensor_name(self, path: tuple) -> str:
        """A unique safetensors key for ``path``: the joined path, suffixed on a collision."""
        name = _path_str(path)
        unique, n = name, 1
        while unique in self.tensors:  # e.g. {"a/b": t} beside {"a": {"b": t}}, or 1 beside "1"
            n += 1
            unique = f"{name}~{n}"
        return unique

    def add_tensor(self, t: torch.Tensor, path: tuple) -> str:
        """Store a detached, contiguous CPU copy of ``t`` that shares storage with no other."""
        where = _path_str(path)
        if t.layout != torch.strided or t.is_quantized or t.device.type == "meta":
            raise TypeError(f"cannot checkpoint the {t.layout} / quantised / meta tensor at {where!r}")
        if t.dtype not in _SAFE_DTYPES:
            raise TypeError(f"cannot checkpoint the {t.dtype} tensor at {where!r}: safetensors has no such dtype")
        t = t.detach().resolve_conj().resolve_neg().cpu()
        key = (t.device.type, t.untyped_storage().data_ptr())
        # safetensors refuses tensors that share storage; copies make each one independent,
        # and load gives back separate tensors, as the contract says.
        if not t.is_contiguous() or key in self._storages or key[1] == 0:
            t = t.clone(memory_format=torch.contiguous_format)
        self._storages.add((t.device.type, t.untyped_storage().data_ptr()))
        name = self.tensor_name(path)
        self.tensors[name] = t
        return name

    def encode_key(self, key: Any, path: tuple) -> Any:
        """Encode a dict key; keys must come back hashable, so containers other than tuples are refused."""
        if isinstance(key, (list, dict, torch.Tensor, np.ndarray)):
            raise TypeError(f"cannot checkpoint the {type(key).__name__} dict key at {_path_str(path)!r}")
        return self.encode(key, path)

    def encode(self, obj: Any, path: tuple) -> Any:
        """Encode ``obj`` found at key ``path`` as a JSON-able tree, collecting its tensors."""
        if obj is None or isinstance(obj, bool):
            return obj
        if isinstance(obj, str):  # includes StrEnum: saved as its value
            return str(obj)
        if isinstance(obj, int):  # includes IntEnum: saved as its value
            return int(obj)
        if isinstance(obj, float):
            x = float(obj)
            return x if x == x and abs(x) != float("inf") else {"$float": _float_bits(x)}
        if isinstance(obj, torch.Tensor):
            return {"$tensor": self.add_tensor(obj, path)}
        if isinstance(obj, torch.dtype):
            return {"$dtype": str(obj).removeprefix("torch.")}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                raise TypeError(f"cannot checkpoint the object-dtype numpy array at {_path_str(path)!r}")
            return {"$ndarray": self.add_tensor(torch.from_numpy(np.array(obj, copy=True)), path)}
        if isinstance(obj, np.generic):  # numpy scalars come back as the equal Python scalar
            return self.encode(obj.item(), path)
        if not isinstance(obj, (dict, list, tuple)):
            raise TypeError(
                f"cannot checkpoint the {type(obj).__module__}.{type(obj).__qualname__} at {_path_str(path)!r}: "
                "only dict/list/tuple/int/float/bool/None/str/Tensor/ndarray can be saved"
            )
        if id(obj) in self._stack:
            raise TypeError(f"cannot checkpoint a reference cycle at {_path_str(path)!r}")
        self._stack.add(id(obj))
        try:
            return self._encode_container(obj, path)
        finally:
            self._stack.discard(id(obj))

    def _encode_container(self, obj: dict | list | tuple, path: tuple) -> Any:
        """Encode a dict (any subclass comes back as a dict), list, tuple or torch.Size."""
        if isinstance(obj, dict):
            if all(type(k) is str and not k.startswith("$") for k in obj):
                return {k: self.encode(v, (*path, k)) for k, v in obj.items()}
            return {"$dict": [[self.encode_key(k, path), self.encode(v, (*path, k))] for k, v in obj.items()]}
        if isinstance(obj, torch.Size):
            return {"$size": [int(n) for n in obj]}
        items = [self.encode(v, (*path, i)) for i, v in enumerate(obj)]
        if isinstance(obj, list):
            return items
        if type(obj) is not tuple:  # a namedtuple would silently lose its fields' names
            raise TypeError(f"cannot checkpoint the {type(obj).__qualname__} (a tuple subclass) at {_path_str(path)!r}")
        return {"$tuple": items}


def flatten_state(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state into its tensors and a JSON-able tree that refers to them by name.

    Args:
        obj: nested dict/list/tuple of int/float/bool/None/str/Tensor (numpy arrays and
            scalars, ``torch.dtype`` and ``torch.Size`` also accepted).

    Returns:
        ``(tensors, meta)``: contiguous CPU tensors keyed by their "/"-joined key path, and the
        tree for ``unflatten_state``.

    Raises:
        TypeError: a value of another type, naming its key path.
    """
    flattener = _Flattener()
    meta = flattener.encode(obj, ())
    return flattener.tensors, meta


def unflatten_state(tensors: dict[str, torch.Tensor], meta: Any) -> Any:
    """Rebuild the state that ``flatten_state`` split into ``(tensors, meta)``.

    Raises:
        CheckpointError: the tree names a missing tensor or has an unknown tag.
    """
    if meta is None or type(meta) in (bool, int, float, str):
        return meta
    if isinstance(meta, list):
        return [unflatten_state(tensors, v) for v in meta]
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint state holds an unexpected {type(meta).__name__}; {_HINT}")
    if len(meta) == 1:
        ((tag, value),) = meta.items()
        if tag.startswith("$"):
            return _decode_tagged(tensors, tag, value)
    return {k: unflatten_state(tensors, v) for k, v in meta.items()}


def _decode_tagged(tensors: dict[str, torch.Tensor], tag: str, value: Any) -> Any:
    """Decode one ``{"$tag": value}`` object of the JSON tree."""
    try:
        if tag in ("$tensor", "$ndarray"):
            if value not in tensors:
                raise CheckpointError(
                    f"checkpoint state refers to tensor {value!r}, which its weights file lacks; {_HINT}"
                )
            return tensors[value] if tag == "$tensor" else tensors[value].numpy()
        if tag == "$tuple":
            return tuple(unflatten_state(tensors, v) for v in value)
        if tag == "$dict":
            return {unflatten_state(tensors, k): unflatten_state(tensors, v) for k, v in value}
        if tag == "$float":
            return struct.unpack(">d", bytes.fromhex(value))[0]
        if tag == "$dtype":
            dtype = getattr(torch, value)
            if isinstance(dtype, torch.dtype):
                return dtype
        if tag == "$size":
            return torch.Size(value)
    except (TypeError, ValueError, AttributeError, struct.error) as err:
        raise CheckpointError(f"checkpoint state has a malformed {tag} entry ({err}); {_HINT}") from err
    raise CheckpointError(f"checkpoint state has an unknown entry {tag!r} (written by a newer genlab?); {_HINT}")


# --------------------------------------------------------------------------- files
