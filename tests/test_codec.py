"""Tests for qhybrid.codec: the JSON encoding of job arguments and results."""

from __future__ import annotations

import base64
import enum
import importlib
import json
import math
import os
import subprocess
import sys
import zlib
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import ClassicalRegister, Parameter, ParameterVector, QuantumRegister
from qiskit.quantum_info import SparsePauliOp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # works whether or not the package is pip-installed
    sys.path.insert(0, str(ROOT))

codec = importlib.import_module("qhybrid.codec")
errors = importlib.import_module("qhybrid.errors")
InvalidInput = errors.InvalidInput


def roundtrip(obj: Any) -> Any:
    """Encode to strict JSON text and back."""
    text = codec.dumps(obj)
    json.loads(text, parse_constant=_no_constants)  # strict JSON: no NaN/Infinity literals
    return codec.loads(text)


def _no_constants(name: str) -> None:
    raise AssertionError(f"non-strict JSON constant {name} in output")


def _bell() -> QuantumCircuit:
    qc = QuantumCircuit(2, 2, name="bell")
    qc.h(0)
    qc.cx(0, 1)
    qc.measure([0, 1], [0, 1])
    return qc


def _parametrised() -> tuple[QuantumCircuit, Parameter, ParameterVector]:
    theta = Parameter("θ")
    vec = ParameterVector("v", 3)
    qc = QuantumCircuit(3, name="ansatz", global_phase=theta / 2)
    qc.rx(theta, 0)
    for i in range(3):
        qc.ry(vec[i], i)
    qc.rzz(2 * vec[0] + vec[1] * theta, 0, 2)
    qc.cx(1, 2)
    return qc, theta, vec


# --------------------------------------------------------------------------------------------
# plain JSON and Python builtins


@pytest.mark.parametrize(
    "obj",
    [
        None,
        True,
        False,
        0,
        -(10**30),
        1.5,
        -0.0,
        1e-310,
        "",
        "héllo ✓",
        [],
        {},
        [1, [2, [3, "x"]], {"a": None}],
        {"a": {"b": [1.25, True, None]}},
    ],
)
def test_plain_json_passes_through(obj: Any) -> None:
    assert codec.encode(obj) == obj
    back = roundtrip(obj)
    assert back == obj
    assert type(back) is type(obj)


def test_negative_zero_keeps_sign() -> None:
    assert math.copysign(1.0, roundtrip(-0.0)) == -1.0


@pytest.mark.parametrize(
    "obj",
    [
        1 + 2j,
        complex(0, -0.5),
        b"",
        b"\x00\xff binary \x80",
        (),
        (1, "a", (2.5, None)),
        {1, 2, 3},
        set(),
        frozenset({"a", (1, 2)}),
        {1: "one", 2: "two"},
        {(1, 2): [3], None: 4, 2.5: "x", True: "t"},
        {"a": 1, 2: "mixed"},
        {"__type__": "x", "other": 1},
        {"__type__": "ndarray", "__value__": "not an envelope"},
        {"nested": [{"__type__": "dict"}]},
        {"__value__": 1},
    ],
)
def test_builtin_roundtrip_keeps_type(obj: Any) -> None:
    back = roundtrip(obj)
    assert back == obj
    assert type(back) is type(obj)


@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_infinities(value: float) -> None:
    encoded = codec.encode(value)
    assert encoded == {"__type__": "float", "__value__": "inf" if value > 0 else "-inf"}
    assert roundtrip(value) == value


def test_nan_and_infinities_nested_are_strict_json() -> None:
    obj = {"x": [math.nan, math.inf], "z": complex(math.nan, -math.inf), "t": (math.nan,)}
    json.dumps(codec.encode(obj), allow_nan=False)
    back = roundtrip(obj)
    assert math.isnan(back["x"][0]) and back["x"][1] == math.inf
    assert math.isnan(back["z"].real) and back["z"].imag == -math.inf
    assert type(back["t"]) is tuple and math.isnan(back["t"][0])


def test_dumps_is_compact() -> None:
    assert codec.dumps({"a": [1, 2]}) == '{"a":[1,2]}'


def test_bytearray_comes_back_as_equal_bytes() -> None:
    assert roundtrip(bytearray(b"abc")) == b"abc"


def test_tuple_inside_set_and_dict_keys() -> None:
    obj = {frozenset({1, 2}): {(1, (2, 3))}}
    assert roundtrip(obj) == obj


def test_set_encoding_is_deterministic() -> None:
    a = codec.dumps({"s": {3, "b", 1, (2, 1), "a"}})
    b = codec.dumps({"s": {"a", (2, 1), 1, "b", 3}})
    assert a == b


def test_dict_with_type_key_is_escaped() -> None:
    obj = {"__type__": "complex", "__value__": [1, 2]}
    encoded = codec.encode(obj)
    assert encoded["__type__"] == "dict"
    assert roundtrip(obj) == obj


class Color(enum.IntEnum):
    RED = 1


class Name(str, enum.Enum):  # noqa: UP042 - a str mixin whose str() is not its value
    ALICE = "alice"


Point = namedtuple("Point", "x y")


def test_builtin_subclasses_decode_as_base_types() -> None:
    obj = {"e": Color.RED, "s": Name.ALICE, "o": OrderedDict(a=1), "p": Point(1, 2)}
    encoded = codec.encode(obj)
    assert json.dumps(encoded) == json.dumps(
        {"e": 1, "s": "alice", "o": {"a": 1}, "p": {"__type__": "tuple", "__value__": [1, 2]}}
    )
    back = roundtrip(obj)
    assert back == {"e": 1, "s": "alice", "o": {"a": 1}, "p": (1, 2)}
    assert type(back["e"]) is int and type(back["s"]) is str


# --------------------------------------------------------------------------------------------
# numpy


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(-5, 5, dtype=np.int8),
        np.arange(10, dtype=np.uint16),
        np.array([True, False, True]),
        np.arange(6, dtype=">f8").reshape(2, 3),
        np.array(3.5),
        np.zeros((0, 3)),
        np.array(["ab", "", "héllo"]),
        np.array([b"ab", b"c"]),
        np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        np.array([1, -2], dtype="timedelta64[ms]"),
        np.array([math.nan, math.inf, -math.inf, 1.0], dtype=np.float32),
        np.array([2**64 - 1], dtype=np.uint64),
    ],
    ids=lambda arr: f"{arr.dtype.str}-{arr.shape}",
)
def test_ndarray_roundtrip(arr: np.ndarray) -> None:
    back = roundtrip(arr)
    assert type(back) is np.ndarray
    assert back.dtype == arr.dtype
    assert back.shape == arr.shape
    equal_nan = arr.dtype.kind in "fc"
    assert np.array_equal(back, arr, equal_nan=equal_nan)
    assert back.flags.writeable


def test_complex_arrays() -> None:
    rng = np.random.default_rng(7)
    for dtype in (np.complex64, np.complex128):
        arr = (rng.normal(size=(4, 5)) + 1j * rng.normal(size=(4, 5))).astype(dtype)
        back = roundtrip({"amps": arr})["amps"]
        assert back.dtype == dtype
        assert np.array_equal(back, arr)


def test_non_contiguous_arrays_come_back_in_logical_order() -> None:
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    for arr in (base.T, base[::2, 1::3], np.asfortranarray(base)):
        back = roundtrip(arr)
        assert np.array_equal(back, arr)
        assert back.flags.c_contiguous


def test_large_array() -> None:
    arr = np.random.default_rng(1).normal(size=(1000, 1000))
    text = codec.dumps({"big": arr})
    back = codec.loads(text)["big"]
    assert back.shape == (1000, 1000)
    assert np.array_equal(back, arr)


def test_ndarray_subclass_decodes_as_ndarray() -> None:
    class Tagged(np.ndarray):
        pass

    back = roundtrip(np.array([[1, 2], [3, 4]]).view(Tagged))
    assert type(back) is np.ndarray
    assert np.array_equal(back, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    "arr",
    [
        np.array([1, "a", None], dtype=object),
        np.zeros(2, dtype=[("x", "f8"), ("y", "i4")]),
        np.ma.masked_array([1, 2], mask=[0, 1]),
    ],
    ids=["object", "structured", "masked"],
)
def test_unsupported_arrays_are_refused(arr: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match=r"^result\[\"x\"\]: cannot encode"):
        codec.encode({"x": arr}, path="result")


@pytest.mark.parametrize(
    "scalar",
    [
        np.float64(1.1),
        np.float32(0.1),
        np.float16(0.5),
        np.int64(-(2**62)),
        np.int8(-3),
        np.uint64(2**64 - 1),
        np.bool_(True),
        np.bool_(False),
        np.complex128(1.5 - 2j),
        np.complex64(0.1 + 0.2j),
        np.longdouble(1) / 3,
        np.str_("hi"),
        np.bytes_(b"raw"),
        np.datetime64("2024-02-29T12:00"),
    ],
    ids=repr,
)
def test_numpy_scalars_keep_dtype(scalar: Any) -> None:
    back = roundtrip(scalar)
    assert type(back) is type(scalar)
    assert back == scalar


def test_numpy_scalar_nan_is_strict_json() -> None:
    back = roundtrip([np.float64(math.nan), np.float32(-math.inf)])
    assert isinstance(back[0], np.float64) and np.isnan(back[0])
    assert isinstance(back[1], np.float32) and back[1] == -np.inf


# --------------------------------------------------------------------------------------------
# qiskit


def test_circuit_roundtrip() -> None:
    qc = _bell()
    back = roundtrip(qc)
    assert isinstance(back, QuantumCircuit)
    assert back == qc
    assert back.name == "bell"


def test_circuit_with_classical_registers_and_measurements() -> None:
    qr = QuantumRegister(3, "q")
    low, high = ClassicalRegister(2, "low"), ClassicalRegister(1, "high")
    qc = QuantumCircuit(qr, low, high, name="regs", metadata={"shots": 100, "tag": "x"})
    qc.h(qr[0])
    qc.cx(qr[0], qr[1])
    qc.measure(qr[0], low[0])
    qc.measure(qr[1], low[1])
    with qc.if_test((low, 3)):
        qc.x(qr[2])
    qc.barrier()
    qc.measure(qr[2], high[0])
    back = roundtrip({"circuit": qc})["circuit"]
    assert back == qc
    assert [(r.name, r.size) for r in back.cregs] == [("low", 2), ("high", 1)]
    assert back.num_clbits == 3
    assert back.metadata == {"shots": 100, "tag": "x"}
    assert back.count_ops()["measure"] == 3


def test_parametrised_circuit_keeps_parameters() -> None:
    qc, theta, vec = _parametrised()
    back = roundtrip(qc)
    assert back == qc
    assert back.parameters == qc.parameters  # names and uuids
    assert [p.name for p in back.parameters] == [p.name for p in qc.parameters]

    # The caller's own Parameter objects bind the decoded circuit.
    values = {theta: 0.3, vec: [0.1, 0.2, 0.4]}
    bound = back.assign_parameters(values)
    assert not bound.parameters
    assert bound == qc.assign_parameters(values)
    assert math.isclose(float(bound.global_phase), 0.15)

    # Positional binding (by sorted parameter order) works too.
    assert back.assign_parameters([0.1, 0.2, 0.4, 0.3]) == qc.assign_parameters(
        [0.1, 0.2, 0.4, 0.3]
    )


def test_nested_circuits_in_dict() -> None:
    qc, _, _ = _parametrised()
    obj = {
        "circuits": [_bell(), qc],
        "pairs": (qc, {"shots": 1024}),
        "observable": SparsePauliOp.from_list([("ZZ", 1.0)]),
        "x0": np.zeros(4),
    }
    back = roundtrip(obj)
    assert back["circuits"] == [_bell(), qc]
    assert back["pairs"][0] == qc and back["pairs"][1] == {"shots": 1024}
    assert back["observable"] == obj["observable"]
    assert np.array_equal(back["x0"], obj["x0"])


def test_encode_circuits_batch() -> None:
    qc, _, _ = _parametrised()
    circuits = [_bell(), qc, QuantumCircuit(1)]
    text = codec.encode_circuits(circuits)
    assert isinstance(text, str)
    zlib.decompress(base64.b64decode(text))  # base64 of a zlib stream
    back = codec.decode_circuits(text)
    assert back == circuits
    assert back[1].parameters == qc.parameters
    assert codec.decode_circuits(text.encode("ascii")) == circuits


def test_encode_circuits_accepts_single_circuit_and_generators() -> None:
    assert codec.decode_circuits(codec.encode_circuits(_bell())) == [_bell()]
    assert codec.decode_circuits(codec.encode_circuits(c for c in [_bell()])) == [_bell()]
    assert codec.decode_circuits(codec.encode_circuits([])) == []


def test_encode_circuits_refuses_non_circuits() -> None:
    with pytest.raises(InvalidInput, match=r"circuits\[1\]: expected a QuantumCircuit"):
        codec.encode_circuits([_bell(), "not a circuit"])


@pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"junk").decode(), ""])
def test_decode_circuits_refuses_garbage(text: str) -> None:
    with pytest.raises(InvalidInput):
        codec.decode_circuits(text)


def test_decode_circuits_refuses_zlib_bombs(monkeypatch: pytest.MonkeyPatch) -> None:
    text = codec.encode_circuits([_bell()])
    monkeypatch.setattr(codec, "MAX_INFLATED_BYTES", 64)
    with pytest.raises(errors.PayloadTooLarge):
        codec.decode_circuits(text)


@pytest.mark.parametrize(
    "op",
    [
        SparsePauliOp.from_list([("XIZ", 1.0), ("YYI", -0.5j), ("ZZZ", 0.25 + 1e-17j)]),
        SparsePauliOp(["X", "X"], coeffs=[1.0, 2.0]),  # duplicate labels stay separate
        SparsePauliOp.from_list([], num_qubits=3),
        SparsePauliOp.from_sparse_list([("XZ", [0, 40], 3.0)], num_qubits=50),
        SparsePauliOp.from_list([("-iX", 1.0)]),  # phase is folded into the coefficient
    ],
    ids=["mixed", "duplicates", "empty", "wide", "phase"],
)
def test_sparse_pauli_op_roundtrip(op: SparsePauliOp) -> None:
    back = roundtrip(op)
    assert isinstance(back, SparsePauliOp)
    assert back == op
    assert back.num_qubits == op.num_qubits
    assert back.paulis.to_labels() == op.paulis.to_labels()
    assert np.array_equal(back.coeffs, op.coeffs)


def test_sparse_pauli_op_encoding_shape() -> None:
    encoded = codec.encode(SparsePauliOp.from_list([("XY", 1 - 2j)]))
    assert encoded == {
        "__type__": "SparsePauliOp",
        "__value__": {"num_qubits": 2, "terms": [["XY", [1.0, -2.0]]]},
    }


def test_parametrised_sparse_pauli_op_is_refused() -> None:
    op = SparsePauliOp(["X"], coeffs=np.array([Parameter("a")], dtype=object))
    with pytest.raises(InvalidInput, match="parameterised coefficients"):
        codec.encode(op)


def test_other_qiskit_objects_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"^value\[0\]: cannot encode object of type Parameter"):
        codec.encode([Parameter("a")])


# --------------------------------------------------------------------------------------------
# refusals and malformed input


class MyObject:
    pass


def test_refusal_names_type_and_path() -> None:
    with pytest.raises(InvalidInput) as info:
        codec.encode({"a": [1, 2, MyObject()]}, path="result")
    assert str(info.value) == (
        'result["a"][2]: cannot encode object of type MyObject; '
        "return JSON types, numpy arrays, QuantumCircuit, SparsePauliOp or complex"
    )
    assert info.value.field == 'result["a"][2]'
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("obj", "where"),
    [
        (MyObject(), "value"),
        ([MyObject()], "value[0]"),
        ({"x": (1, MyObject())}, 'value["x"][1]'),
        ({1: {"y": MyObject()}}, 'value[1]["y"]'),
        ({"q": 'a"b', "z": {'a"b': MyObject()}}, 'value["z"]["a\\"b"]'),
        (lambda: 1, "value"),
        (object, "value"),
    ],
)
def test_refusal_paths(obj: Any, where: str) -> None:
    with pytest.raises(InvalidInput) as info:
        codec.dumps(obj)
    assert str(info.value).startswith(f"{where}: cannot encode object of type ")


def test_circular_reference_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append({"again": loop})
    with pytest.raises(InvalidInput, match="circular reference"):
        codec.encode(loop)


def test_shared_objects_are_not_circular() -> None:
    shared = [1, 2]
    assert roundtrip({"a": shared, "b": shared}) == {"a": [1, 2], "b": [1, 2]}


@pytest.mark.parametrize(
    "data",
    [
        {"__type__": "pickle", "__value__": "gASVAAAA"},
        {"__type__": "complex"},
        {"__type__": "complex", "__value__": [1, 2], "extra": 1},
        {"__type__": 3, "__value__": 1},
        {"__type__": "complex", "__value__": [1]},
        {"__type__": "complex", "__value__": ["a", 1]},
        {"__type__": "float", "__value__": "1.5"},
        {"__type__": "bytes", "__value__": "***"},
        {"__type__": "set", "__value__": [[1, 2]]},
        {"__type__": "dict", "__value__": [[1]]},
        {"__type__": "ndarray", "__value__": {"dtype": "<f8", "shape": [3], "data": "AAAA"}},
        {"__type__": "ndarray", "__value__": {"dtype": "|O", "shape": [0], "data": ""}},
        {"__type__": "ndarray", "__value__": {"dtype": "nope", "shape": [0], "data": ""}},
        {"__type__": "ndarray", "__value__": {"dtype": "<f8", "shape": [-1], "data": ""}},
        {"__type__": "numpy.scalar", "__value__": {"dtype": "<f8", "value": [1]}},
        {"__type__": "QuantumCircuit", "__value__": "AAAA"},
        {"__type__": "QuantumCircuit", "__value__": codec.encode_circuits([])},
        {"__type__": "SparsePauliOp", "__value__": {"num_qubits": 1, "terms": [["Q", [1, 0]]]}},
    ],
)
def test_malformed_envelopes_raise_invalid_input(data: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        codec.decode({"outer": [data]})
    assert str(info.value).startswith('value["outer"][0]')


def test_loads_rejects_invalid_json() -> None:
    with pytest.raises(InvalidInput, match="invalid JSON"):
        codec.loads("{not json")


def test_decode_rejects_non_json_objects() -> None:
    with pytest.raises(InvalidInput):
        codec.decode({"a": MyObject()})


def test_codec_never_uses_pickle() -> None:
    source = Path(codec.__file__).read_text()
    assert "import pickle" not in source and "pickle." not in source
    assert "cloudpickle" not in source and "marshal" not in source


# --------------------------------------------------------------------------------------------
# import cost


def test_import_does_not_import_qiskit_or_numpy() -> None:
    script = (
        "import sys\n"
        "import qhybrid.codec as c\n"
        "assert 'qiskit' not in sys.modules, 'qiskit imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
        "obj = {'a': [1, 2.5, None, 'x', (1, 2), {3}, b'b', 1j, float('nan')], 4: 'k'}\n"
        "assert c.loads(c.dumps(obj)).keys() == obj.keys()\n"
        "assert 'qiskit' not in sys.modules, 'qiskit imported by plain data'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported by plain data'\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_qiskit_counts_encode_as_the_dict_they_are() -> None:
    from qiskit.result import Counts

    counts = Counts({"00": 510, "11": 514})
    assert codec.loads(codec.dumps({"counts": counts})) == {"counts": {"00": 510, "11": 514}}
