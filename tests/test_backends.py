"""Devices: registry, descriptions and Targets, the device worker's checks and simulation, and
QhybridBackend with the Qiskit primitives (through an in-process stand-in for the device queue)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qiskit import QuantumCircuit, transpile
from qiskit.circuit import Gate
from qiskit.circuit.library import PauliGate, U3Gate
from qiskit.primitives import BackendEstimatorV2, BackendSamplerV2
from qiskit.providers import JobStatus
from qiskit.quantum_info import SparsePauliOp, random_unitary
from qiskit.transpiler import CouplingMap, generate_preset_pass_manager
from qiskit_aer import AerSimulator

from backends import (
    DeviceRegistry,
    build_simulator,
    check_circuits,
    default_registry,
    describe,
    load_devices,
    result_from_json,
    result_to_json,
    run_task,
)
from backends.execute import estimate_memory_bytes
from backends.registry import eagle_127_edges, falcon_27_edges, heavy_hex_edges, resolve_name
from qhybrid.backend import QhybridBackend, QhybridJob, Transport, target_from_description
from qhybrid.codec import encode_circuits
from qhybrid.errors import Conflict, InvalidInput, NotFound, QhybridError, TaskFailed
from tests.conftest import bell

GIB = 1024**3


class InProcessTransport:
    """Stands in for the device queue: runs each task at once with `run_task`.

    Results go through `json.dumps(allow_nan=False)` to prove they are strict JSON.
    """

    def __init__(self, registry: DeviceRegistry) -> None:
        self.registry = registry
        self.tasks: dict[str, tuple[str, Any]] = {}
        self.submitted: list[tuple[str, dict[str, Any]]] = []

    def submit(self, device: str, circuits: str, options: dict[str, Any]) -> str:
        assert isinstance(circuits, str)
        json.dumps(options, allow_nan=False)
        self.submitted.append((device, options))
        task_id = uuid.uuid4().hex
        try:
            data = run_task(self.registry.get(device), circuits, options, max_threads=1)
            self.tasks[task_id] = ("DONE", json.loads(json.dumps(data, allow_nan=False)))
        except QhybridError as exc:
            self.tasks[task_id] = ("ERROR", exc)
        return task_id

    def status(self, task_id: str) -> str:
        return self.tasks[task_id][0]

    def result(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        status, value = self.tasks[task_id]
        if status == "ERROR":
            raise value
        if status == "CANCELED":
            raise QhybridError("canceled")
        return value

    def cancel(self, task_id: str) -> None:
        self.tasks[task_id] = ("CANCELED", None)


@pytest.fixture(scope="module")
def registry() -> DeviceRegistry:
    return default_registry()


@pytest.fixture(scope="module")
def transport(registry: DeviceRegistry) -> InProcessTransport:
    return InProcessTransport(registry)


def backend_for(name: str, transport: InProcessTransport) -> QhybridBackend:
    # The description travels as JSON, as it would from the HTTP API.
    desc = json.loads(json.dumps(describe(transport.registry.get(name))))
    return QhybridBackend(desc, transport)


def undirected(edges: Any) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for a, b in edges}


# --- registry ----------------------------------------------------------------------------------


def test_default_devices(registry: DeviceRegistry) -> None:
    assert registry.names()[:8] == [
        "aer_simulator", "aer_statevector", "aer_density_matrix", "aer_mps", "aer_stabilizer",
        "aer_statevector_gpu", "generic_heavy_hex_27", "generic_heavy_hex_127",
    ]
    assert {"fake_torino", "fake_sherbrooke", "fake_kyiv", "fake_brisbane"} <= set(
        registry.names()[8:])
    sizes = {spec.name: spec.num_qubits for spec in registry}
    assert sizes["generic_heavy_hex_27"] == 27 and sizes["generic_heavy_hex_127"] == 127
    assert sizes["aer_density_matrix"] == 15 and sizes["aer_mps"] == 100
    assert sizes["fake_torino"] == 133 and sizes["fake_sherbrooke"] == 127
    for spec in registry:
        assert spec.shared == (spec.kind == "aer")
        assert spec.noise == (spec.kind != "aer")
        assert spec.device == ("GPU" if spec.name.endswith("_gpu") else "CPU")
    assert registry.get("aer_mps").method == "matrix_product_state"
    with pytest.raises(NotFound) as err:
        registry.get("ibm_nowhere")
    assert "aer_simulator" in str(err.value) and "generic_heavy_hex_127" in str(err.value)


@pytest.mark.parametrize(("edges", "n", "couplings"),
                         [(falcon_27_edges(), 27, 28), (eagle_127_edges(), 127, 144)])
def test_ibm_heavy_hex_layouts(edges: list[tuple[int, int]], n: int, couplings: int) -> None:
    cmap = CouplingMap([list(e) for e in edges])
    assert cmap.size() == n and cmap.is_connected()
    assert len(undirected(edges)) == couplings
    degrees = Counter(q for edge in undirected(edges) for q in edge)
    assert max(degrees.values()) == 3
    assert sorted(degrees) == list(range(n))


@pytest.mark.parametrize("name", ["generic_heavy_hex_27", "generic_heavy_hex_127"])
def test_generic_devices_are_heavy_hex_not_fully_connected(registry: DeviceRegistry,
                                                           name: str) -> None:
    spec = registry.get(name)
    target = target_from_description(describe(spec))
    cmap = target.build_coupling_map()
    assert cmap is not None and cmap.size() == spec.num_qubits
    graph = cmap.graph.to_undirected(multigraph=False)
    assert max(graph.degree(q) for q in graph.node_indices()) == 3
    assert len(undirected(cmap.get_edges())) < spec.num_qubits * 2  # sparse, far from n^2/2


@pytest.mark.parametrize("n", [5, 19, 40, 57, 100])
def test_heavy_hex_other_sizes(n: int) -> None:
    edges = heavy_hex_edges(n)
    cmap = CouplingMap([list(e) for e in edges])
    assert cmap.size() == n and cmap.is_connected()
    assert max(Counter(q for e in edges for q in e).values()) <= 3


def test_load_devices(tmp_path: Any) -> None:
    text = """
[devices.line5]
num_qubits = 5
coupling = "line"
noise = false
seed = 3

[devices.grid6]
size = 6
coupling = "grid"
rows = 2

[devices.full4]
size = 4
coupling = "full"

[devices.hex40]
size = 40

[devices.small_sv]
kind = "aer"
method = "statevector"
num_qubits = 12
max_memory_bytes = 1048576

[devices.aer_simulator]
kind = "aer"
num_qubits = 20
"""
    registry = load_devices(text)
    assert {"line5", "grid6", "full4", "hex40", "small_sv", "generic_heavy_hex_27"} <= set(
        registry.names())
    assert registry.get("aer_simulator").num_qubits == 20  # replaced
    line = registry.get("line5")
    assert (line.kind, line.noise, line.shared, line.seed) == ("generic", False, False, 3)
    assert undirected(line.edges) == {(0, 1), (1, 2), (2, 3), (3, 4)}
    assert undirected(registry.get("grid6").edges) == {(0, 1), (1, 2), (3, 4), (4, 5), (0, 3),
                                                         (1, 4), (2, 5)}
    assert len(undirected(registry.get("full4").edges)) == 6
    assert registry.get("hex40").noise is True
    quiet = backend_for("line5", InProcessTransport(registry))  # noise = false: ideal counts
    counts = quiet.run(transpile(bell(), quiet), shots=500).result().get_counts()
    assert set(counts) == {"00", "11"}
    small = registry.get("small_sv")
    assert (small.shared, small.max_memory_bytes, small.edges) == (True, 1048576, None)
    path = tmp_path / "devices.toml"
    path.write_text(text)
    assert load_devices(path).names() == registry.names()
    assert load_devices(str(path)).names() == registry.names()
    for bad in ['[devices.x]\nsize = 5\ncoupling = "ring"',
                '[devices.x]\nsize = 5\ncolour = "red"',
                '[devices.x]\nkind = "aer"\nnoise = true',
                '[devices.x]\nsize = 5\ncoupling = "grid"\nrows = 2',
                '[devices."bad name"]\nsize = 5',
                "[devices.x\n"]:
        with pytest.raises(InvalidInput):
            load_devices(bad)


# --- descriptions and targets ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aer_simulator", "aer_density_matrix", "aer_mps",
                                  "aer_stabilizer", "generic_heavy_hex_27",
                                  "generic_heavy_hex_127"])
def test_description_rebuilds_the_workers_target(registry: DeviceRegistry, name: str) -> None:
    spec = registry.get(name)
    desc = json.loads(json.dumps(describe(spec), allow_nan=False))
    assert desc["name"] == name and desc["num_qubits"] == spec.num_qubits
    client = target_from_description(desc)
    worker = build_simulator(spec, max_threads=1).target
    assert client.num_qubits == spec.num_qubits
    if spec.kind == "aer":
        assert desc["coupling_map"] is None
        assert client.build_coupling_map() is None and worker.build_coupling_map() is None
        # exactly what AerSimulator(method=...) accepts
        assert set(client.operation_names) == set(
            AerSimulator(method=spec.method).target.operation_names)
        assert set(desc["basis_gates"]) <= set(worker.operation_names)
        assert set(desc["basis_gates"]) <= set(client.operation_names)
        return
    assert set(client.operation_names) == set(worker.operation_names)
    assert set(client.build_coupling_map().get_edges()) == set(
        worker.build_coupling_map().get_edges())
    assert set(client.build_coupling_map().get_edges()) == {tuple(e) for e in desc["coupling_map"]}
    for op in client.operation_names:  # same seed: same error rates and durations
        for qargs, props in client[op].items():
            other = worker[op][qargs]
            assert (props and props.error, props and props.duration) == (
                other and other.error, other and other.duration)
    # Deterministic: a second client gets the same numbers.
    again = target_from_description(desc)
    assert again["sx"][(0,)].error == client["sx"][(0,)].error


def test_transpile_respects_the_27_qubit_coupling_map(transport: InProcessTransport) -> None:
    backend = backend_for("generic_heavy_hex_27", transport)
    qc = QuantumCircuit(6)
    qc.h(0)
    for q in range(1, 6):
        qc.cx(0, q)  # a star: needs routing on heavy-hex
    qc.measure_all()
    edges = set(backend.coupling_map.get_edges())
    for circuit in (
        transpile(qc, backend, optimization_level=1, seed_transpiler=7),
        generate_preset_pass_manager(backend=backend, optimization_level=2,
                                     seed_transpiler=7).run(qc),
    ):
        assert circuit.num_qubits == 27
        assert set(circuit.count_ops()) <= {"cx", "rz", "sx", "x", "measure", "barrier"}
        for instruction in circuit.data:
            if instruction.operation.num_qubits == 2:
                pair = tuple(circuit.find_bit(q).index for q in instruction.qubits)
                assert pair in edges


def test_transpile_onto_an_aer_device_keeps_the_width(transport: InProcessTransport) -> None:
    backend = backend_for("aer_statevector", transport)
    circuit = transpile(bell(), backend, optimization_level=2, seed_transpiler=1)
    assert circuit.num_qubits == 2 and set(circuit.count_ops()) <= {"h", "cx", "measure",
                                                                    "barrier"}


# --- running through QhybridBackend ------------------------------------------------------------


def test_bell_on_aer_simulator(transport: InProcessTransport) -> None:
    backend = backend_for("aer_simulator", transport)
    assert isinstance(transport, Transport)
    job = backend.run(bell(), shots=4000, seed_simulator=11)
    assert isinstance(job, QhybridJob) and job.status() == JobStatus.DONE  # ran synchronously
    result = job.result()
    counts = result.get_counts()
    assert set(counts) == {"00", "11"}
    assert abs(counts["00"] / 4000 - 0.5) < 0.05
    assert result.backend_name == "aer_simulator" and result.job_id == job.job_id()
    assert job.status() == JobStatus.DONE and job.done()
    with pytest.raises(Conflict):
        job.submit()


def test_bell_on_noisy_generic_device(transport: InProcessTransport) -> None:
    backend = backend_for("generic_heavy_hex_27", transport)
    circuit = transpile(bell(), backend, seed_transpiler=3)
    counts = backend.run(circuit, shots=2000, seed_simulator=5).result().get_counts()
    good = counts.get("00", 0) + counts.get("11", 0)
    assert good / 2000 > 0.85
    assert set(counts) - {"00", "11"}, "noise should produce some wrong outcomes"


def test_default_options(transport: InProcessTransport) -> None:
    backend = backend_for("aer_simulator", transport)
    assert (backend.options.shots, backend.options.memory, backend.options.seed_simulator) == (
        1024, False, None)
    assert backend.max_circuits is None
    backend.run(bell())
    assert transport.submitted[-1] == ("aer_simulator",
                                       {"shots": 1024, "memory": False, "seed_simulator": None})
    with pytest.raises(InvalidInput, match="unknown run options"):
        backend.run(bell(), meas_level=2)
    with pytest.raises(InvalidInput, match="shots"):
        backend.run(bell(), shots=0)


def test_sampler_v2(transport: InProcessTransport) -> None:
    backend = backend_for("aer_simulator", transport)
    sampler = BackendSamplerV2(backend=backend, options={"seed_simulator": 1234})
    circuit = bell()
    circuit.metadata = {"not json": object()}  # the sampler keeps it; it is not sent
    result = sampler.run([circuit, bell()], shots=2000).result()
    counts = result[0].data.meas.get_counts()
    assert set(counts) == {"00", "11"} and abs(counts["00"] / 2000 - 0.5) < 0.05
    assert result[0].metadata["circuit_metadata"] == circuit.metadata
    assert transport.submitted[-1][1] == {"shots": 2000, "memory": True, "seed_simulator": 1234}
    # On the noisy device, with an ISA circuit.
    noisy = backend_for("generic_heavy_hex_27", transport)
    isa = transpile(bell(), noisy, seed_transpiler=3)
    counts = BackendSamplerV2(backend=noisy).run([isa], shots=1000).result()[0].data.meas.get_counts()
    assert (counts.get("00", 0) + counts.get("11", 0)) / 1000 > 0.85


def test_estimator_v2(transport: InProcessTransport) -> None:
    backend = backend_for("aer_simulator", transport)
    estimator = BackendEstimatorV2(backend=backend, options={"seed_simulator": 99})
    plus = QuantumCircuit(1)
    plus.h(0)
    pubs = [(bell(measure=False), [SparsePauliOp("ZZ"), SparsePauliOp("XX"), SparsePauliOp("ZI")]),
            (plus, SparsePauliOp("X"))]
    result = estimator.run(pubs, precision=0.01).result()
    zz, xx, zi = result[0].data.evs
    assert zz == pytest.approx(1, abs=0.03) and xx == pytest.approx(1, abs=0.03)
    assert zi == pytest.approx(0, abs=0.05)
    assert result[1].data.evs == pytest.approx(1, abs=0.03)
    assert transport.submitted[-1][1] == {"shots": 10000, "memory": False, "seed_simulator": 99}
    # The stabilizer device's Clifford-only Target works with the estimator's basis changes.
    stab = backend_for("aer_stabilizer", transport)
    evs = BackendEstimatorV2(backend=stab).run([(bell(measure=False), "YY")]).result()[0].data.evs
    assert evs == pytest.approx(-1, abs=0.05)


# --- refusals and failures ---------------------------------------------------------------------


def test_too_wide_circuit_is_refused_before_sending(transport: InProcessTransport,
                                                    registry: DeviceRegistry) -> None:
    backend = backend_for("generic_heavy_hex_27", transport)
    before = len(transport.submitted)
    wide = QuantumCircuit(28)
    wide.measure_all()
    with pytest.raises(InvalidInput, match="28 qubits; device generic_heavy_hex_27 has 27"):
        backend.run(wide)
    assert len(transport.submitted) == before
    with pytest.raises(InvalidInput, match="has 27"):
        check_circuits(registry.get("generic_heavy_hex_27"), [wide])


def test_non_isa_circuit_is_refused(transport: InProcessTransport,
                                    registry: DeviceRegistry) -> None:
    noisy = backend_for("generic_heavy_hex_27", transport)
    with pytest.raises(InvalidInput, match="'h' is not supported.*transpile"):
        noisy.run(bell())
    qc = QuantumCircuit(27)
    qc.cx(0, 2)  # not coupled
    with pytest.raises(InvalidInput, match=r"'cx' on qubits \[0, 2\]"):
        noisy.run(qc)
    opaque = QuantumCircuit(2)
    opaque.append(Gate("mystery", 2, []), [0, 1])
    with pytest.raises(InvalidInput, match="mystery"):
        backend_for("aer_simulator", transport).run(opaque)
    # a gate that takes a standard name on more qubits is refused, also after the real one
    fake_h = QuantumCircuit(2)
    fake_h.h(0)
    fake_h.append(Gate("h", 2, []), [0, 1])
    with pytest.raises(InvalidInput, match=r"'h' on qubits \[0, 1\]"):
        backend_for("aer_simulator", transport).run(fake_h)
    # inside a control-flow block, couplings count on the qubits the block is laid on
    branch = QuantumCircuit(133, 1)
    branch.measure(0, 0)
    with branch.if_test((branch.clbits[0], 1)):
        branch.cz(0, 1)
        branch.cz(0, 2)
    with pytest.raises(InvalidInput, match=r"'cz' on qubits \[0, 2\]"):
        backend_for("fake_torino", transport).run(branch)
    from qiskit.circuit import Parameter

    theta = QuantumCircuit(1)
    theta.rx(Parameter("theta"), 0)
    with pytest.raises(InvalidInput, match="unbound parameters \\(theta\\)"):
        backend_for("aer_simulator", transport).run(theta)
    # The worker repeats the check for tasks from any client.
    with pytest.raises(InvalidInput, match="'h' is not supported"):
        run_task(registry.get("generic_heavy_hex_27"), encode_circuits([bell()]), {}, 1)


def test_memory_estimate_refuses_large_states(transport: InProcessTransport) -> None:
    registry = load_devices("""
[devices.aer_density_matrix]
kind = "aer"
method = "density_matrix"
max_memory_bytes = 268435456   # 256 MiB: 12 qubits of density matrix, not 14
""")
    spec = registry.get("aer_density_matrix")
    qc = QuantumCircuit(14)
    qc.h(range(14))
    qc.measure_all()
    assert estimate_memory_bytes(spec, qc) == 16 * 4**14
    with pytest.raises(InvalidInput, match=r"needs about 4 GiB .* allows 256 MiB"):
        check_circuits(spec, [qc])
    # Through the backend, the refusal surfaces from job.result().
    local = InProcessTransport(registry)
    job = QhybridBackend(describe(spec), local).run(qc)
    assert job.status() == JobStatus.ERROR
    with pytest.raises(InvalidInput, match="needs about 4 GiB"):
        job.result()
    # Idle qubits cost nothing: a Bell pair transpiled onto 127 qubits fits.
    eagle = default_registry().get("generic_heavy_hex_127")
    isa = transpile(bell(), backend_for("generic_heavy_hex_127", transport), seed_transpiler=1)
    assert isa.num_qubits == 127 and estimate_memory_bytes(eagle, isa) == 16 * 4
    check_circuits(eagle, [isa])


def test_result_json_round_trip_with_memory(registry: DeviceRegistry) -> None:
    qc = bell()
    qc.metadata = {"tag": [1, 2]}
    data = run_task(registry.get("aer_statevector"), encode_circuits([qc, bell()]),
                    {"shots": 100, "memory": True, "seed_simulator": 3}, max_threads=1)
    text = json.dumps(data, allow_nan=False)
    result = result_from_json(json.loads(text))
    memory = result.get_memory(0)
    assert len(memory) == 100 and set(memory) <= {"00", "11"}
    assert result.get_counts(0) == dict(Counter(memory))
    assert result.results[0].header["metadata"] == {"tag": [1, 2]}
    assert result.results[0].meas_level == 2 and result.results[0].shots == 100
    # result_to_json of the rebuilt Result gives the same JSON.
    assert json.loads(json.dumps(result_to_json(result))) == json.loads(text)


def test_result_to_json_handles_arrays_and_states() -> None:
    from qiskit.quantum_info import Statevector
    from qiskit.result import Result

    result = Result.from_dict({
        "backend_name": "x", "backend_version": "1", "qobj_id": "", "job_id": "j",
        "success": True, "results": [{
            "shots": 1, "success": True, "header": {"name": "c"},
            "data": {"statevector": Statevector([1, 0]), "expval": np.float64(0.5),
                     "amps": np.array([1 + 1j, 0])},
        }],
    })
    data = result_to_json(result)
    json.dumps(data, allow_nan=False)
    back = result_from_json(data)
    assert np.allclose(back.get_statevector(0), [1, 0])
    assert back.data(0)["expval"] == 0.5
    assert np.allclose(back.data(0)["amps"], [1 + 1j, 0])


def test_result_to_json_keeps_values_json_alone_would_change() -> None:
    from qiskit.result import Result
    from qiskit.result.models import MeasLevel

    result = Result.from_dict({
        "backend_name": "x", "backend_version": "1", "qobj_id": "", "job_id": "j",
        "success": True, "results": [{
            "shots": 1, "success": True, "header": {"name": "c", "metadata": {"t": (1, 2)}},
            "meas_level": MeasLevel.CLASSIFIED,
            "data": {"odd": {"__type__": "bytes", "__value__": "AA=="}, "nan": float("nan"),
                     "neg": [float("-inf"), 2.5, None, True, "x"], "c": 1 + 2j,
                     "probs": {0: 0.25, 3: 0.75}},
        }],
    })
    data = result_to_json(result)
    back = result_from_json(json.loads(json.dumps(data, allow_nan=False)))
    saved = back.data(0)
    assert saved["odd"] == {"__type__": "bytes", "__value__": "AA=="}   # not b"\x00"
    assert math.isnan(saved["nan"]) and saved["neg"][0] == -math.inf
    assert saved["neg"][1:] == [2.5, None, True, "x"] and saved["c"] == 1 + 2j
    assert saved["probs"] == {0: 0.25, 3: 0.75}
    assert back.results[0].header["metadata"] == {"t": [1, 2]} and back.results[0].meas_level == 2


def test_failed_simulation_raises_with_the_simulators_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # aer keeps its own memory cap (max_memory_mb) behind our estimate. Switch the estimate off,
    # as for matrix product states, so a too-large statevector reaches aer and fails there.
    from backends import execute

    monkeypatch.setattr(execute, "estimate_memory_bytes", lambda spec, circuit: None)
    registry = load_devices("""
[devices.tiny_sv]
kind = "aer"
method = "statevector"
max_memory_bytes = 1048576
""")
    spec = registry.get("tiny_sv")
    qc = QuantumCircuit(22)
    qc.h(range(22))
    qc.measure_all()
    data = run_task(spec, encode_circuits([qc]), {"shots": 10}, max_threads=1)
    assert data["success"] is False and "Insufficient memory" in data["status"]
    json.dumps(data, allow_nan=False)
    job = QhybridBackend(describe(spec), InProcessTransport(registry)).run(qc, shots=10)
    with pytest.raises(TaskFailed, match="Insufficient memory to run circuit") as err:
        job.result()
    assert isinstance(err.value, QhybridError) and "statevector" in str(err.value)
    assert str(err.value).count("Insufficient memory") == 1  # experiment status not repeated


def test_cancel_and_status(transport: InProcessTransport) -> None:
    job = backend_for("aer_simulator", transport).run(bell(), shots=10)
    job.cancel()
    assert job.status() == JobStatus.CANCELLED and job.cancelled()


def test_qhybrid_backend_imports_without_server_packages() -> None:
    code = ("import sys, qhybrid; assert 'qiskit' not in sys.modules; import qhybrid.backend; "
            "bad = [m for m in ('qiskit_aer', 'celery', 'redis', 'flask', 'boto3', 'backends', "
            "'tasks') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- aer devices accept what AerSimulator accepts ------------------------------------------


def aer_user_circuit() -> QuantumCircuit:
    """What a Qiskit user runs on AerSimulator(): u3, unitary, initialize, mcx, saves."""
    qc = QuantumCircuit(4, 4)
    qc.initialize([0, 1], 0)
    qc.h(1)
    qc.append(U3Gate(0.3, 0.2, 0.1), [3])
    qc.unitary(random_unitary(4, seed=1), [2, 1])
    qc.mcx([0, 1, 2], 3)
    qc.save_statevector()
    qc.save_statevector(label="per_shot", pershot=True)
    qc.save_probabilities_dict([0, 1], label="probs")
    qc.measure(range(4), range(4))
    return qc


@pytest.mark.parametrize("name", ["aer_simulator", "aer_statevector", "aer_density_matrix",
                                  "aer_mps"])
def test_circuit_transpiled_for_aer_simulator_runs_on_every_aer_device(
        transport: InProcessTransport, name: str) -> None:
    method = transport.registry.get(name).method
    aer = AerSimulator(method=method)
    circuit = aer_user_circuit()
    circuit.data = [i for i in circuit.data if i.operation.name in aer.target]  # its saves
    isa = transpile(circuit, aer, optimization_level=0)
    wanted = {"u3", "unitary", "initialize", "mcx"} & set(aer.target.operation_names)
    assert wanted <= set(isa.count_ops()) and "u3" in wanted
    direct = AerSimulator(method=method).run(isa, shots=50, seed_simulator=3, memory=True).result()
    ours = backend_for(name, transport).run(isa, shots=50, seed_simulator=3, memory=True).result()
    assert ours.get_counts() == direct.get_counts()
    assert ours.get_memory() == direct.get_memory()
    assert set(ours.data(0)) == set(direct.data(0))
    assert ours.results[0].metadata["method"] == direct.results[0].metadata["method"]
    if "statevector" in direct.data(0):
        assert np.allclose(ours.get_statevector(), direct.get_statevector())
        per_shot = ours.data(0)["per_shot"]     # a per-shot save stays a list
        assert isinstance(per_shot, list) and len(per_shot) == len(direct.data(0)["per_shot"])
        assert ours.data(0)["probs"] == pytest.approx(dict(direct.data(0)["probs"]))


def test_stabilizer_device_runs_what_aer_stabilizer_accepts(transport: InProcessTransport) -> None:
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.append(PauliGate("XYZ"), [0, 1, 2])
    qc.save_stabilizer()
    qc.measure_all()
    isa = transpile(qc, AerSimulator(method="stabilizer"))
    ours = backend_for("aer_stabilizer", transport).run(isa, shots=20, seed_simulator=1).result()
    assert "stabilizer" in ours.data(0) and sum(ours.get_counts().values()) == 20


def test_a_device_refuses_what_aer_would_refuse(transport: InProcessTransport) -> None:
    qc = QuantumCircuit(2)
    qc.rx(0.3, 0)    # not Clifford
    qc.measure_all()
    with pytest.raises(InvalidInput, match="'rx' is not supported"):
        backend_for("aer_stabilizer", transport).run(qc)


# --- copies of IBM devices ----------------------------------------------------------------------


def test_fake_devices_are_the_snapshots_qiskit_ibm_runtime_ships(registry: DeviceRegistry) -> None:
    from qiskit_ibm_runtime.fake_provider import FakeProviderForBackendV2

    from backends.ibm_fakes import snapshots

    shipped = {b.name: b.num_qubits for b in FakeProviderForBackendV2().backends()}
    assert {s.name: s.num_qubits for s in snapshots()} == shipped   # the adapter's listing
    assert {spec.name for spec in registry if spec.kind == "fake"} == set(shipped)


def test_ibm_and_fake_names_select_the_snapshot(registry: DeviceRegistry) -> None:
    for name in ("fake_torino", "ibm_torino", "FakeTorino"):
        assert resolve_name(name, registry).name == "fake_torino"
    assert resolve_name("ibm_sherbrooke", registry).snapshot == "fake_sherbrooke"
    assert registry.get("ibm_kyiv").name == "fake_kyiv"
    with pytest.raises(NotFound, match="unknown device 'ibm_nowhere'"):
        resolve_name("ibm_nowhere", registry)


def test_fake_device_target_is_the_snapshots(registry: DeviceRegistry) -> None:
    from qiskit_ibm_runtime.fake_provider import FakeTorino

    desc = json.loads(json.dumps(describe(registry.get("ibm_torino"))))
    ours, theirs = target_from_description(desc), FakeTorino().target
    assert set(ours.operation_names) == set(theirs.operation_names)
    assert set(ours.build_coupling_map().get_edges()) == set(theirs.build_coupling_map().get_edges())
    assert ours["cz"][(0, 1)].error == theirs["cz"][(0, 1)].error
    assert ours["sx"][(0,)].duration == theirs["sx"][(0,)].duration
    assert set(desc["basis_gates"]) == {"cz", "id", "rz", "sx", "x"}
    assert desc["aliases"] == ["ibm_torino"]


def test_fake_device_counts_equal_the_fake_backends_own_run(registry: DeviceRegistry) -> None:
    # a 5-qubit snapshot keeps this fast; the torino one runs through the service in
    # tests/test_devices.py
    from qiskit_ibm_runtime.fake_provider import FakeManilaV2

    fake = FakeManilaV2()
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    qc.measure_all()
    isa = transpile(qc, fake, seed_transpiler=1)
    direct = fake.run(isa, shots=2000, seed_simulator=9).result().get_counts()
    ours = backend_for("ibm_manila", InProcessTransport(registry)).run(
        isa, shots=2000, seed_simulator=9).result().get_counts()
    assert ours == direct and len(ours) > 2          # noisy, and the same noise


# --- GPU devices --------------------------------------------------------------------------------


def test_gpu_device_is_refused_where_aer_has_no_gpu(registry: DeviceRegistry,
                                                    tmp_path: Path) -> None:
    from backends.execute import host_devices

    if "GPU" in host_devices():
        pytest.skip("this host has a GPU: see the README's GPU check")
    with pytest.raises(InvalidInput, match="simulates on an NVIDIA GPU .* has none"):
        run_task(registry.get("aer_statevector_gpu"), encode_circuits([bell()]), {}, 1)
    # a worker host as deployed (shared Redis and storage named; neither is reached first)
    env = {**os.environ, "QHYBRID_REDIS_URL": "redis://127.0.0.1:1/0",
           "QHYBRID_STORAGE_URL": f"file://{tmp_path}"}
    proc = subprocess.run([sys.executable, "-m", "tasks.devices", "--devices",
                           "aer_statevector_gpu"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode != 0 and "has none" in proc.stderr
