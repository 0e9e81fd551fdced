"""Running one quantum task on a device worker: build the simulator, check, simulate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from qiskit.circuit import QuantumCircuit
from qiskit.transpiler import Target
from qiskit_aer import AerError, AerSimulator

from backends.aer_target import restore_save_instructions
from backends.codec import result_to_json
from backends.registry import MAX_SHOTS, DeviceSpec, describe
from qhybrid.backend import (
    check_fits,
    generic_backend,
    target_from_description,
    validate_run_options,
)
from qhybrid.codec import decode_circuits
from qhybrid.errors import InvalidInput

__all__ = ["build_simulator", "check_circuits", "check_host", "device_target",
           "estimate_memory_bytes", "run_task"]

# Building a 127-qubit noisy simulator takes about a second; a worker reuses it for every task.
_SIMULATORS: dict[tuple[DeviceSpec, int], AerSimulator] = {}
_TARGETS: dict[DeviceSpec, Target] = {}
_LOCK = threading.Lock()

# Operations the stabilizer method simulates: aer's automatic method picks it (and needs no
# dense state) when a circuit holds only these and the device is noiseless.
_CLIFFORD = frozenset({"id", "x", "y", "z", "h", "s", "sdg", "sx", "sxdg", "cx", "cy", "cz",
                       "swap", "ecr", "pauli", "measure", "reset", "barrier", "delay",
                       "if_else", "while_loop", "for_loop", "switch_case", "break_loop",
                       "continue_loop", "store"})


def host_devices() -> tuple[str, ...]:
    """Where aer can simulate on this host: ("CPU",), or ("CPU", "GPU") with qiskit-aer-gpu
    and an NVIDIA GPU it can use."""
    return tuple(AerSimulator().available_devices())


def check_host(spec: DeviceSpec) -> None:
    """Refuse a device this host cannot simulate (a GPU device without a usable GPU)."""
    if spec.device != "CPU" and spec.device not in host_devices():
        raise InvalidInput(
            f"device {spec.name} simulates on an NVIDIA GPU ({spec.device}); this host has none "
            f"that aer can use (aer here offers {', '.join(host_devices())}). Run its device "
            "worker on a GPU host with qiskit-aer-gpu installed", field="device")


def build_simulator(spec: DeviceSpec, max_threads: int) -> AerSimulator:
    """The aer simulator of a device, with at most `max_threads` threads; cached per process.

    Generic devices use the same GenericBackendV2 as the client's Target (see
    `qhybrid.backend.generic_backend`) and, with noise, its noise model. Fake devices simulate
    as the snapshot's own `run()` does: plain aer with the snapshot's noise model.
    """
    key = (spec, max_threads)
    check_host(spec)
    with _LOCK:
        simulator = _SIMULATORS.get(key)
        if simulator is None:
            options: dict[str, Any] = {
                "method": spec.method,
                "max_parallel_threads": max(1, int(max_threads)),
                # aer refuses a circuit past this too, also when its automatic method
                # would pick a density matrix.
                "max_memory_mb": max(1, spec.max_memory_bytes >> 20),
            }
            if spec.device != "CPU":
                options["device"] = spec.device
            if spec.kind == "generic":
                if not spec.noise:
                    options["noise_model"] = None
                simulator = AerSimulator.from_backend(generic_backend(describe(spec)), **options)
            elif spec.kind == "fake":
                from backends.ibm_fakes import fake_noise_model

                if spec.noise:
                    options["noise_model"] = fake_noise_model(spec.snapshot)
                simulator = AerSimulator(**options)
            else:
                simulator = AerSimulator(**options)
            _SIMULATORS[key] = simulator
    return simulator


def device_target(spec: DeviceSpec) -> Target:
    """The Target clients see for the device (from its description); cached per process."""
    with _LOCK:
        target = _TARGETS.get(spec)
        if target is None:
            target = _TARGETS[spec] = target_from_description(describe(spec))
    return target


def _operations(circuit: QuantumCircuit) -> Iterator[tuple[str, list[int]]]:
    """(name, qubit indices) of every operation, inside control-flow blocks too."""
    index = {qubit: i for i, qubit in enumerate(circuit.qubits)}
    for instruction in circuit.data:
        qubits = [index[qubit] for qubit in instruction.qubits]
        yield instruction.name, qubits
        if instruction.is_standard_gate():   # no blocks; .operation would build the gate
            continue
        for block in getattr(instruction.operation, "blocks", ()):
            for name, inner in _operations(block):
                yield name, [qubits[i] for i in inner]


def estimate_memory_bytes(spec: DeviceSpec, circuit: QuantumCircuit) -> int | None:
    """Bytes of simulator state the circuit needs on the device; None when unknowable.

    Counts only qubits the circuit acts on: aer drops idle ones, so a circuit transpiled onto
    127 qubits that touches 5 costs 5. Statevector 16 * 2^n, density matrix 16 * 4^n; matrix
    product states depend on entanglement, so they are left to aer's own limit.
    """
    active: set[int] = set()
    clifford = True
    for name, qubits in _operations(circuit):
        if name != "barrier":
            active.update(qubits)
        clifford = clifford and name in _CLIFFORD
    n = len(active)
    method = spec.method
    if method == "automatic" and clifford and not spec.noise:
        method = "stabilizer"
    if method == "stabilizer":
        return (2 * n) ** 2 // 8 + 1  # the tableau: 2n x 2n bits
    if method == "density_matrix":
        return 16 * 4**n
    if method in ("statevector", "automatic"):
        # automatic: a noisy circuit may go to a density matrix, but aer only picks one that
        # fits max_memory_mb; the statevector is the least it needs.
        return 16 * 2**n
    return None


def _most_bytes(spec: DeviceSpec, n: int) -> int | None:
    """The most `estimate_memory_bytes` can say for a circuit of `n` qubits on the device."""
    if spec.method in ("statevector", "automatic"):
        return 16 * 2**n      # automatic's stabilizer needs less
    if spec.method == "density_matrix":
        return 16 * 4**n
    if spec.method == "stabilizer":
        return (2 * n) ** 2 // 8 + 1
    return None


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def check_circuits(spec: DeviceSpec, circuits: Sequence[QuantumCircuit]) -> None:
    """Refuse circuits wider than the device, not fitting its Target (the client's checks, again,
    since a task may come from any client), or whose state exceeds its memory allowance."""
    if not circuits:
        raise InvalidInput("a quantum task needs at least one circuit", field="circuits")
    check_fits(device_target(spec), spec.name, circuits)
    for i, circuit in enumerate(circuits):
        most = _most_bytes(spec, circuit.num_qubits)
        if most is not None and most <= spec.max_memory_bytes:
            continue    # fits even if every qubit were active: no need to count them
        need = estimate_memory_bytes(spec, circuit)
        if need is not None and need > spec.max_memory_bytes:
            raise InvalidInput(
                f"circuit {circuit.name!r} needs about {_size(need)} to simulate with the "
                f"{spec.method} method; device {spec.name} allows {_size(spec.max_memory_bytes)}"
                " per task",
                field=f"circuits[{i}]",
            )


def run_task(
    spec: DeviceSpec, circuits_payload: str, options: dict[str, Any], max_threads: int,
    checked: bool = False, timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Simulate a quantum task and return its result JSON (`backends.codec.result_to_json`).

    Bad input raises InvalidInput. `checked` says the service already checked these very
    circuits against the device when it accepted the task (the API does), so they are not
    checked again. A simulation that fails (aer's Result has success False, or aer refuses the
    circuits) returns success False and aer's message, which `QhybridJob.result()` raises as
    TaskFailed. `timing` receives ``simulate_s``, the seconds spent in the simulator.
    """
    run_options = validate_run_options(options)
    if run_options["shots"] > MAX_SHOTS:
        raise InvalidInput(f"shots must be at most {MAX_SHOTS}", field="shots")
    if run_options["seed_simulator"] is None:
        del run_options["seed_simulator"]
    circuits = restore_save_instructions(decode_circuits(circuits_payload))
    if not checked:
        check_circuits(spec, circuits)
    simulator = build_simulator(spec, max_threads)
    start = time.perf_counter()
    try:
        result = simulator.run(circuits, **run_options).result()
    except AerError as exc:
        return {"success": False, "status": f"ERROR: {exc}", "backend_name": spec.name,
                "results": []}
    finally:
        if timing is not None:
            timing["simulate_s"] = time.perf_counter() - start
    data = result_to_json(result)
    data["backend_name"] = spec.name
    return data
