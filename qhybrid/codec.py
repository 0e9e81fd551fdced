"""JSON encoding of job arguments and results, used by client, server and jobs alike.

`encode` turns a value into a strict-JSON structure; `decode` is its inverse. Plain JSON values
(dicts with str keys, lists, str, int, finite float, bool, None) pass through unchanged. Every
other supported value becomes an envelope ``{"__type__": name, "__value__": json_value}``:

=================  ==================================================================
``__type__``       ``__value__``
=================  ==================================================================
``float``          ``"nan"``, ``"inf"`` or ``"-inf"`` (keeps the output strict JSON)
``complex``        ``[real, imag]``
``bytes``          base64 string (``bytearray`` is sent as ``bytes`` too)
``tuple``          list of items; decodes to a ``tuple``
``set``            list of items, in a deterministic order; ``frozenset`` likewise
``dict``           ``[[key, value], ...]``: dicts with non-str keys, or with a ``"__type__"`` key
``ndarray``        ``{"dtype": "<f8", "shape": [...], "data": base64 of C-order bytes}``
``numpy.scalar``   ``{"dtype": "<f8", "value": item}`` or ``{"dtype": ..., "data": base64}``
``QuantumCircuit`` QPY, zlib-compressed, base64 (the same format as `encode_circuits`)
``SparsePauliOp``  ``{"num_qubits": n, "terms": [[label, [re, im]], ...]}``
=================  ==================================================================

Choices:

* numpy scalars (``np.float64``, ``np.int64``, ``np.bool_``, ``np.complex128``, ...) keep their
  dtype: they decode to the same numpy type with an equal value. Their value is stored as a
  plain JSON item where that is lossless, else as raw bytes (e.g. ``np.longdouble``).
* Subclasses of builtin types (``IntEnum``, ``OrderedDict``, namedtuples, ...) are accepted and
  decode as the builtin base type; ndarray subclasses decode as plain ``ndarray``; masked arrays,
  object arrays and structured arrays are refused.
* qiskit and numpy are imported lazily, only when an object of that kind is met, so importing
  this module (and encoding plain data) never imports them. Pickle is never used.

Anything else raises `qhybrid.errors.InvalidInput` naming the type and the path where it was
found, e.g. ``result["a"][2]``.

Longer than 500 lines: the encoder and the decoder of every type it carries live together,
so that the two directions cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import sys
import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from qhybrid.errors import InvalidInput, PayloadTooLarge

if TYPE_CHECKING:
    from qiskit.circuit import QuantumCircuit

__all__ = [
    "MAX_INFLATED_BYTES",
    "decode",
    "decode_circuits",
    "dumps",
    "encode",
    "encode_circuits",
    "loads",
]

TYPE_KEY = "__type__"
VALUE_KEY = "__value__"

#: Upper bound on the size of one decompressed QPY blob (guards against zlib bombs).
MAX_INFLATED_BYTES = 1 << 30
#: QPY up to this size is compressed with zlib's fastest level.
_FAST_DEFLATE_BYTES = 4 << 20

_SUPPORTED = "return JSON types, numpy arrays, QuantumCircuit, SparsePauliOp or complex"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# --------------------------------------------------------------------------------------------
# helpers


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _inflate(raw: bytes) -> bytes:
    """zlib-decompress, refusing output larger than `MAX_INFLATED_BYTES`."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(raw, MAX_INFLATED_BYTES + 1)
    if len(out) > MAX_INFLATED_BYTES or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"compressed data inflates beyond {MAX_INFLATED_BYTES} bytes")
    if not inflater.eof:
        raise ValueError("truncated zlib stream")
    return out


def _key_path(path: str, key: Any) -> str:
    if isinstance(key, str):
        if key.isprintable() and '"' not in key and "\\" not in key:
            return f'{path}["{key}"]'       # what json.dumps gives, without calling it
        return f"{path}[{json.dumps(key, ensure_ascii=False)}]"
    return f"{path}[{key!r}]"


def _plain_item(value: Any) -> bool:
    """True for a value that encodes and decodes as itself: None, str, bool, int, finite float
    (exactly those types, not subclasses)."""
    kind = type(value)
    return (value is None or kind is str or kind is bool or kind is int
            or (kind is float and math.isfinite(value)))


#: Types a decoded JSON scalar has: each decodes as itself (a float from JSON is finite or
#: already the float it names).
_JSON_SCALARS = frozenset({str, int, float, bool})


def _envelope(name: str, value: Any) -> dict[str, Any]:
    return {TYPE_KEY: name, VALUE_KEY: value}


def _from_qiskit(obj: Any) -> bool:
    """True when obj's class (or a base class) comes from qiskit; never imports qiskit."""
    return any(
        (getattr(cls, "__module__", None) or "").partition(".")[0] == "qiskit"
        for cls in type(obj).__mro__
    )


def _is_numpy(obj: Any) -> bool:
    """True for numpy arrays and scalars; never imports numpy."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray | np.generic)


# --------------------------------------------------------------------------------------------
# encode


def encode(obj: Any, *, path: str = "value") -> Any:
    """Return a strict-JSON-able structure for obj; `path` names obj in error messages."""
    return _Encoder().encode(obj, path)


class _Encoder:
    """One encoding pass; tracks containers on the stack to refuse circular references."""

    def __init__(self) -> None:
        self._active: set[int] = set()

    def encode(self, obj: Any, path: str) -> Any:
        kind = type(obj)
        # Fast path: exact JSON types.
        if obj is None or kind is str or kind is bool or kind is int:
            return obj
        if kind is float:
            return obj if math.isfinite(obj) else _envelope("float", _nonfinite_name(obj))
        if kind is list or kind is dict or kind is tuple or kind is set or kind is frozenset:
            return self._container(obj, path)
        # numpy scalars subclass float/int/complex/str/bytes, so look at them before the
        # isinstance checks below.
        if _is_numpy(obj):
            return _encode_numpy(obj, path)
        # qiskit's builtin subclasses (Counts is a dict) encode as what they are built on
        if _from_qiskit(obj) and not isinstance(obj, dict | list | tuple):
            return _encode_qiskit(obj, path)
        if isinstance(obj, int):
            return int.__int__(obj)
        if isinstance(obj, float):
            return self.encode(float.__float__(obj), path)
        if isinstance(obj, str):
            return str.__str__(obj)
        if isinstance(obj, complex):
            return _envelope("complex", [self.encode(obj.real, path), self.encode(obj.imag, path)])
        if isinstance(obj, bytes | bytearray):
            return _envelope("bytes", _b64(bytes(obj)))
        if isinstance(obj, list | dict | tuple | set | frozenset):
            return self._container(obj, path)
        raise InvalidInput(
            f"{path}: cannot encode object of type {kind.__name__}; {_SUPPORTED}", field=path
        )

    def _container(self, obj: Any, path: str) -> Any:
        marker = id(obj)
        if marker in self._active:
            raise InvalidInput(f"{path}: circular reference", field=path)
        self._active.add(marker)
        try:
            if isinstance(obj, dict):
                return self._dict(obj, path)
            if isinstance(obj, list):
                return [item if _plain_item(item) else self.encode(item, f"{path}[{i}]")
                        for i, item in enumerate(obj)]
            if isinstance(obj, tuple):
                items = [self.encode(item, f"{path}[{i}]") for i, item in enumerate(obj)]
                return _envelope("tuple", items)
            name = "frozenset" if isinstance(obj, frozenset) else "set"
            items = [self.encode(item, f"{path}{{{i}}}") for i, item in enumerate(obj)]
            items.sort(key=lambda item: json.dumps(item, sort_keys=True))
            return _envelope(name, items)
        finally:
            self._active.discard(marker)

    def _dict(self, obj: dict[Any, Any], path: str) -> Any:
        if TYPE_KEY not in obj and all(type(key) is str for key in obj):
            # plain JSON items as they are, without building their path (results hold many)
            return {key: value if _plain_item(value) else
                    self.encode(value, _key_path(path, key)) for key, value in obj.items()}
        pairs = [
            [self.encode(key, f"{path}.keys()[{i}]"), self.encode(value, _key_path(path, key))]
            for i, (key, value) in enumerate(obj.items())
        ]
        return _envelope("dict", pairs)


def _nonfinite_name(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def _encode_numpy(obj: Any, path: str) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        if isinstance(obj, np.ma.MaskedArray):
            raise InvalidInput(
                f"{path}: cannot encode a masked array; fill it or send data and mask as two "
                "arrays",
                field=path,
            )
        arr = np.asarray(obj)
        _check_dtype(arr.dtype, path)
        return _envelope(
            "ndarray",
            {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": _b64(arr.tobytes())},
        )
    dtype = obj.dtype
    _check_dtype(dtype, path)
    # Store as a JSON item when the round trip through the Python equivalent is lossless.
    if (
        dtype.kind in "biuUS"
        or (dtype.kind == "f" and dtype.itemsize <= 8)
        or (dtype.kind == "c" and dtype.itemsize <= 16)
    ):
        return _envelope(
            "numpy.scalar", {"dtype": dtype.str, "value": encode(obj.item(), path=path)}
        )
    return _envelope("numpy.scalar", {"dtype": dtype.str, "data": _b64(obj.tobytes())})


def _check_dtype(dtype: Any, path: str) -> None:
    if dtype.hasobject or dtype.kind in "OV":
        raise InvalidInput(
            f"{path}: cannot encode numpy data of dtype {dtype}; only plain numeric, bool, "
            "string and datetime dtypes are supported (no object or structured dtypes)",
            field=path,
        )


def _encode_qiskit(obj: Any, path: str) -> Any:
    from qiskit.circuit import QuantumCircuit
    from qiskit.quantum_info import SparsePauliOp

    if isinstance(obj, QuantumCircuit):
        try:
            blob = _dump_qpy([obj])
        except Exception as exc:
            raise InvalidInput(
                f"{path}: cannot serialise QuantumCircuit: {exc}", field=path
            ) from exc
        return _envelope("QuantumCircuit", blob)
    if isinstance(obj, SparsePauliOp):
        if obj.coeffs.dtype == object:
            raise InvalidInput(
                f"{path}: cannot encode a SparsePauliOp with parameterised coefficients; "
                "assign the parameters first",
                field=path,
            )
        terms = []
        for label, coeff in obj.to_list():
            number = complex(coeff)
            terms.append([label, [encode(number.real, path=path), encode(number.imag, path=path)]])
        return _envelope("SparsePauliOp", {"num_qubits": obj.num_qubits, "terms": terms})
    raise InvalidInput(
        f"{path}: cannot encode object of type {type(obj).__name__}; {_SUPPORTED}", field=path
    )


# --------------------------------------------------------------------------------------------
# decode


def decode(data: Any, *, path: str = "value") -> Any:
    """Inverse of `encode`; raises InvalidInput on malformed or unknown envelopes."""
    if data is None or isinstance(data, str | bool | int | float):
        return data
    # JSON scalars decode as themselves: tested inline, since results hold very many
    if isinstance(data, list):
        return [item if item is None or type(item) in _JSON_SCALARS else
                decode(item, path=f"{path}[{i}]") for i, item in enumerate(data)]
    if isinstance(data, dict):
        if TYPE_KEY in data:
            return _decode_envelope(data, path)
        return {key: value if value is None or type(value) in _JSON_SCALARS else
                decode(value, path=_key_path(path, key)) for key, value in data.items()}
    raise InvalidInput(
        f"{path}: cannot decode object of type {type(data).__name__}; expected JSON data",
        field=path,
    )


def _decode_envelope(data: dict[str, Any], path: str) -> Any:
    name = data[TYPE_KEY]
    if set(data) != {TYPE_KEY, VALUE_KEY} or not isinstance(name, str):
        raise InvalidInput(
            f"{path}: malformed envelope: expected exactly the keys {TYPE_KEY!r} and "
            f"{VALUE_KEY!r} with a string type name",
            field=path,
        )
    handler = _DECODERS.get(name)
    if handler is None:
        raise InvalidInput(f"{path}: unknown {TYPE_KEY} {name!r}", field=path)
    try:
        return handler(data[VALUE_KEY], path)
    except (InvalidInput, PayloadTooLarge):
        raise
    except Exception as exc:
        raise InvalidInput(f"{path}: malformed {name!r} value: {exc}", field=path) from exc


def _items(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return [decode(item, path=f"{path}[{i}]") for i, item in enumerate(value)]


def _decode_float(value: Any, path: str) -> float:
    if value not in _NONFINITE:
        raise ValueError("expected 'nan', 'inf' or '-inf'")
    return _NONFINITE[value]


def _number(value: Any, path: str) -> float:
    number = decode(value, path=path)
    if type(number) not in (int, float):
        raise ValueError("expected a number")
    return float(number)


def _decode_complex(value: Any, path: str) -> complex:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("expected [real, imag]")
    return complex(_number(value[0], path), _number(value[1], path))


def _decode_bytes(value: Any, path: str) -> bytes:
    return _unb64(value)


def _decode_tuple(value: Any, path: str) -> tuple[Any, ...]:
    return tuple(_items(value, path))


def _decode_set(value: Any, path: str) -> set[Any]:
    return set(_items(value, path))


def _decode_frozenset(value: Any, path: str) -> frozenset[Any]:
    return frozenset(_items(value, path))


def _decode_dict(value: Any, path: str) -> dict[Any, Any]:
    if not isinstance(value, list):
        raise ValueError("expected a list of [key, value] pairs")
    out: dict[Any, Any] = {}
    for i, pair in enumerate(value):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError("expected a list of [key, value] pairs")
        key = decode(pair[0], path=f"{path}.keys()[{i}]")
        out[key] = decode(pair[1], path=_key_path(path, key))
    return out


def _decode_ndarray(value: Any, path: str) -> Any:
    import numpy as np

    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data"}:
        raise ValueError("expected {'dtype', 'shape', 'data'}")
    dtype = _decode_dtype(value["dtype"], path)
    shape = value["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError("shape must be a list of non-negative integers")
    raw = _unb64(value["data"])
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise ValueError(
            f"data holds {len(raw)} bytes, shape {shape} of {dtype} needs "
            f"{math.prod(shape) * dtype.itemsize}"
        )
    if dtype.itemsize == 0:  # e.g. "<U0": frombuffer refuses zero-sized items
        return np.zeros(shape, dtype=dtype)
    return np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def _decode_dtype(text: Any, path: str) -> Any:
    import numpy as np

    if not isinstance(text, str):
        raise ValueError("dtype must be a string")
    dtype = np.dtype(text)
    _check_dtype(dtype, path)
    return dtype


def _decode_numpy_scalar(value: Any, path: str) -> Any:
    import numpy as np

    if not isinstance(value, dict) or "dtype" not in value or len(value) != 2:
        raise ValueError("expected {'dtype', 'value'} or {'dtype', 'data'}")
    dtype = _decode_dtype(value["dtype"], path)
    if "value" in value:
        item = decode(value["value"], path=path)
        if type(item) not in (bool, int, float, complex, str, bytes):
            raise ValueError("expected a number, str or bytes")
        return dtype.type(item)
    if "data" in value:
        raw = _unb64(value["data"])
        if len(raw) != dtype.itemsize:
            raise ValueError(f"expected {dtype.itemsize} bytes for {dtype}")
        return np.frombuffer(raw, dtype=dtype)[0]
    raise ValueError("expected {'dtype', 'value'} or {'dtype', 'data'}")


def _decode_circuit(value: Any, path: str) -> QuantumCircuit:
    if not isinstance(value, str):
        raise ValueError("expected a base64 string")
    circuits = _load_qpy(value)
    if len(circuits) != 1:
        raise ValueError(f"expected one circuit, got {len(circuits)}")
    return circuits[0]


def _decode_sparse_pauli_op(value: Any, path: str) -> Any:
    from qiskit.quantum_info import SparsePauliOp

    if not isinstance(value, dict) or set(value) != {"num_qubits", "terms"}:
        raise ValueError("expected {'num_qubits', 'terms'}")
    num_qubits, terms = value["num_qubits"], value["terms"]
    if type(num_qubits) is not int or num_qubits < 0 or not isinstance(terms, list):
        raise ValueError("num_qubits must be a non-negative integer and terms a list")
    pairs: list[tuple[str, complex]] = []
    for i, term in enumerate(terms):
        if not isinstance(term, list) or len(term) != 2 or not isinstance(term[0], str):
            raise ValueError("each term must be [label, [re, im]]")
        pairs.append((term[0], _decode_complex(term[1], f"{path}.terms[{i}]")))
    return SparsePauliOp.from_list(pairs, num_qubits=num_qubits)


_DECODERS: dict[str, Callable[[Any, str], Any]] = {
    "float": _decode_float,
    "complex": _decode_complex,
    "bytes": _decode_bytes,
    "tuple": _decode_tuple,
    "set": _decode_set,
    "frozenset": _decode_frozenset,
    "dict": _decode_dict,
    "ndarray": _decode_ndarray,
    "numpy.scalar": _decode_numpy_scalar,
    "QuantumCircuit": _decode_circuit,
    "SparsePauliOp": _decode_sparse_pauli_op,
}


# --------------------------------------------------------------------------------------------
# text and circuit batches


def dumps(obj: Any, *, path: str = "value") -> str:
    """Encode obj and serialise it as compact, strict JSON."""
    return json.dumps(encode(obj, path=path), separators=(",", ":"), allow_nan=False)


def loads(text: str | bytes, *, path: str = "value") -> Any:
    """Parse JSON text and decode it."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"{path}: invalid JSON: {exc}", field=path) from exc
    return decode(data, path=path)


def encode_circuits(circuits: QuantumCircuit | Iterable[QuantumCircuit]) -> str:
    """Serialise one or more circuits as a single QPY blob, zlib-compressed and base64-encoded."""
    from qiskit.circuit import QuantumCircuit

    batch = [circuits] if isinstance(circuits, QuantumCircuit) else list(circuits)
    for i, circuit in enumerate(batch):
        if not isinstance(circuit, QuantumCircuit):
            raise InvalidInput(
                f"circuits[{i}]: expected a QuantumCircuit, got {type(circuit).__name__}",
                field=f"circuits[{i}]",
            )
    try:
        return _dump_qpy(batch)
    except Exception as exc:
        raise InvalidInput(f"circuits: cannot serialise: {exc}", field="circuits") from exc


def decode_circuits(text: str | bytes) -> list[QuantumCircuit]:
    """Inverse of `encode_circuits`: always returns a list of circuits."""
    try:
        return _load_qpy(text)
    except PayloadTooLarge:
        raise
    except Exception as exc:
        raise InvalidInput(f"circuits: cannot load QPY data: {exc}", field="circuits") from exc


def _dump_qpy(circuits: list[QuantumCircuit]) -> str:
    from qiskit import qpy

    buffer = io.BytesIO()
    qpy.dump(circuits, buffer)
    raw = buffer.getvalue()
    # zlib's fastest level up to a few MiB (a third of the time, a larger but still small
    # payload); its default beyond, where the size limit of a task's payload matters more
    return _b64(zlib.compress(raw, 1 if len(raw) <= _FAST_DEFLATE_BYTES else 6))


def _load_qpy(text: str | bytes) -> list[QuantumCircuit]:
    from qiskit import qpy
    from qiskit.circuit import QuantumCircuit

    try:
        raw = _inflate(base64.b64decode(text, validate=True))
    except (binascii.Error, zlib.error) as exc:
        raise ValueError(f"not base64-encoded zlib data: {exc}") from exc
    loaded = qpy.load(io.BytesIO(raw))
    if not all(isinstance(circuit, QuantumCircuit) for circuit in loaded):
        raise ValueError("QPY data holds something other than circuits")
    return list(loaded)


def validate(data: Any, *, path: str = "value") -> None:
    """Check that `data` is well-formed encoded JSON without decoding it (no qiskit import).

    The front end uses this to refuse bad arguments at submission; values are decoded where
    they are used, inside the job.
    """
    if data is None or isinstance(data, str | bool | int | float):
        return
    if isinstance(data, list):
        for i, item in enumerate(data):
            validate(item, path=f"{path}[{i}]")
        return
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: expected JSON data, got {type(data).__name__}", field=path)
    if TYPE_KEY not in data:
        for key, value in data.items():
            validate(value, path=_key_path(path, key))
        return
    name = data[TYPE_KEY]
    if set(data) != {TYPE_KEY, VALUE_KEY} or not isinstance(name, str):
        raise InvalidInput(f"{path}: malformed envelope: expected exactly the keys {TYPE_KEY!r} "
                           f"and {VALUE_KEY!r} with a string type name", field=path)
    if name not in _DECODERS:
        raise InvalidInput(f"{path}: unknown {TYPE_KEY} {name!r}", field=path)
    if name in ("tuple", "set", "frozenset", "dict"):
        validate(data[VALUE_KEY], path=path)
