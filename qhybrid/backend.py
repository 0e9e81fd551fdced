"""Server devices as Qiskit backends: `QhybridBackend` (a `BackendV2`) and `QhybridJob` (a `JobV1`).

A device is known to the client only by its JSON description (see `backends.registry.describe`),
from which `target_from_description` rebuilds the exact Target the server simulates, so
`transpile(circuit, backend)` works offline. `run()` sends the circuits as QPY through a
`Transport`, the one thing that talks to the server. Importing this module imports qiskit, never
qiskit-aer or a server package; `import qhybrid` alone does not import it.
"""

from __future__ import annotations

import importlib
import json
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from qiskit.circuit import (
    BreakLoopOp,
    CircuitInstruction,
    ContinueLoopOp,
    ForLoopOp,
    IfElseOp,
    Instruction,
    QuantumCircuit,
    SwitchCaseOp,
    WhileLoopOp,
)
from qiskit.circuit.controlflow import CONTROL_FLOW_OP_NAMES
from qiskit.circuit.library import get_standard_gate_name_mapping
from qiskit.providers import BackendV2, JobStatus, JobV1, Options
from qiskit.providers.fake_provider import GenericBackendV2
from qiskit.result import Result
from qiskit.transpiler import Target

from qhybrid import tracking
from qhybrid.codec import decode, encode_circuits
from qhybrid.errors import Conflict, InvalidInput, QhybridError, TaskFailed
from qhybrid.run_options import RUN_OPTIONS, validate_run_options

__all__ = [
    "RUN_OPTIONS",
    "QhybridBackend",
    "QhybridJob",
    "Transport",
    "check_fits",
    "failure_message",
    "generic_backend",
    "ibm_fake_backend",
    "result_from_json",
    "target_from_description",
    "validate_run_options",
]

#: Options `QhybridBackend.run` accepts, with their defaults. BackendSamplerV2 passes
#: shots, memory=True and seed_simulator; BackendEstimatorV2 passes shots and seed_simulator.

#: Control-flow operations by name; aer devices with `control_flow` support all of them.
_CONTROL_FLOW = {
    "if_else": IfElseOp,
    "while_loop": WhileLoopOp,
    "for_loop": ForLoopOp,
    "switch_case": SwitchCaseOp,
    "break_loop": BreakLoopOp,
    "continue_loop": ContinueLoopOp,
}

#: Separates an Aer save instruction's label from its subtype on the way through QPY, which
#: keeps the label but not the subtype (see `backends.aer_target.restore_save_instructions`).
SUBTYPE_MARK = "\x1f"
#: Modules whose operation classes an aer device description may name (never user code).
_OPERATION_MODULES = ("qiskit.", "qiskit_aer.")

_FAKES_LOCK = threading.Lock()
_FAKES: dict[str, Any] = {}

#: Our task statuses (see tasks.core.defaults) as Qiskit job statuses.
_JOB_STATUS = {
    "QUEUED": JobStatus.QUEUED,
    "INITIALIZING": JobStatus.INITIALIZING,
    "RUNNING": JobStatus.RUNNING,
    "CANCELING": JobStatus.RUNNING,
    "DONE": JobStatus.DONE,
    "ERROR": JobStatus.ERROR,
    "CANCELED": JobStatus.CANCELLED,
}


@runtime_checkable
class Transport(Protocol):
    """How a QhybridBackend reaches the device queue; the HTTP client or an in-process stand-in.

    `result` returns the JSON made by `backends.codec.result_to_json`; it raises the task's
    error (e.g. InvalidInput from the device's checks) when the task failed before simulating,
    and `qhybrid.errors.Timeout` when `timeout` seconds pass first.
    """

    def submit(self, device: str, circuits: str, options: dict[str, Any]) -> str:
        """Queue QPY circuits (`qhybrid.codec.encode_circuits`) on a device; return the task id."""
        ...

    def status(self, task_id: str) -> str:
        """QUEUED, RUNNING, DONE, ERROR or CANCELED."""
        ...

    def result(self, task_id: str, timeout: float | None) -> dict[str, Any]:
        """Wait for the task and return its result JSON."""
        ...

    def cancel(self, task_id: str) -> None:
        """Ask the server to cancel the task."""
        ...


# ---------------------------------------------------------------------------------------------
# targets


def _edges(desc: Mapping[str, Any]) -> list[list[int]] | None:
    edges = desc.get("coupling_map")
    if edges is None:
        return None
    return [[int(a), int(b)] for a, b in edges]


def generic_backend(desc: Mapping[str, Any]) -> GenericBackendV2:
    """The GenericBackendV2 of a generic device: its properties are fixed by the seed."""
    if desc.get("kind") != "generic":
        raise InvalidInput(f"device {desc.get('name')!r} is not a generic device")
    edges = _edges(desc)
    if edges is None:
        raise InvalidInput(f"generic device {desc.get('name')!r} has no coupling map")
    return GenericBackendV2(
        int(desc["num_qubits"]),
        basis_gates=list(desc["basis_gates"]),
        coupling_map=edges,
        control_flow=bool(desc.get("control_flow", False)),
        seed=int(desc["seed"]),
    )


def ibm_fake_backend(name: str) -> Any:
    """The qiskit-ibm-runtime `FakeBackendV2` named `name` (``fake_torino``); cached per process."""
    with _FAKES_LOCK:
        backend = _FAKES.get(name)
        if backend is None:
            try:
                from qiskit_ibm_runtime.fake_provider import FakeProviderForBackendV2
            except ImportError as exc:
                raise InvalidInput(f"device {name!r} is a copy of an IBM device; its Target "
                                   "needs qiskit-ibm-runtime: pip install qiskit-ibm-runtime"
                                   ) from exc
            with warnings.catch_warnings():   # some snapshots warn that they are synthetic
                warnings.simplefilter("ignore", UserWarning)
                for candidate in FakeProviderForBackendV2().backends():
                    _FAKES.setdefault(candidate.name, candidate)
            backend = _FAKES.get(name)
            if backend is None:
                raise InvalidInput(f"qiskit-ibm-runtime has no fake backend {name!r}")
    return backend


def _operation_class(name: str, path: Any) -> type:
    """The class an aer device names for a variadic operation; a placeholder when it is not
    importable here (qiskit-aer's own instructions on a client without it)."""
    if isinstance(path, str) and path.startswith(_OPERATION_MODULES):
        module, _, qualname = path.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), qualname)
        except (ImportError, AttributeError):
            found = None
        if isinstance(found, type) and issubclass(found, Instruction):
            return found
    return Instruction


def _aer_target(desc: Mapping[str, Any]) -> Target:
    gates = get_standard_gate_name_mapping()
    target = Target(description=str(desc["name"]), num_qubits=int(desc["num_qubits"]))
    operations = desc.get("operations")
    if operations is None:   # a description without Aer's list: its basis gates only
        unknown = [name for name in desc["basis_gates"] if name not in gates]
        if unknown:
            raise InvalidInput(f"unknown basis gates {unknown} in device {desc['name']!r}")
        operations = [[name, None] for name in [*desc["basis_gates"], "measure", "reset",
                                                  "delay"]]
        if desc.get("control_flow"):
            operations += [[name, None] for name in _CONTROL_FLOW]
    for entry in operations:
        name, path = str(entry[0]), entry[1]
        if name in _CONTROL_FLOW:
            if desc.get("control_flow", True):
                target.add_instruction(_CONTROL_FLOW[name], name=name)
        elif path is None and name in gates:
            target.add_instruction(gates[name])  # no properties: ideal, on any qubits
        elif path is None:
            raise InvalidInput(f"unknown operation {name!r} in device {desc['name']!r}")
        else:
            target.add_instruction(_operation_class(name, path), name=name)   # any width
    return target


def target_from_description(desc: Mapping[str, Any]) -> Target:
    """Rebuild a device's Target from its description, without the server.

    Generic devices: the GenericBackendV2 target (gate errors and durations included).
    IBM fake devices: the snapshot's own Target (qiskit-ibm-runtime).
    Aer devices: what AerSimulator(method=...) accepts (the description lists Aer's
    operations), ideal on all qubits and no coupling restriction, so the transpiler neither
    lays out nor routes.
    """
    missing = {"name", "kind", "num_qubits", "basis_gates"} - set(desc)
    if missing:
        raise InvalidInput(f"device description lacks {', '.join(sorted(missing))}")
    if desc["kind"] == "generic":
        return generic_backend(desc).target
    if desc["kind"] == "fake":
        return ibm_fake_backend(str(desc.get("snapshot") or desc["name"])).target
    if desc["kind"] != "aer":
        raise InvalidInput(f"unknown device kind {desc['kind']!r}")
    return _aer_target(desc)


# ---------------------------------------------------------------------------------------------
# results


#: Where `backends.codec.result_to_json` lists the saved data keyed by integers.
INT_KEYED = "qhybrid_int_keyed"


def result_from_json(data: Mapping[str, Any]) -> Result:
    """Rebuild a qiskit Result from `backends.codec.result_to_json` output."""
    raw = dict(data)
    int_keyed = raw.pop(INT_KEYED, None) or []
    decoded = decode(raw, path="result")
    for index, key in int_keyed:
        saved = decoded["results"][int(index)]["data"]
        saved[key] = {int(k): v for k, v in saved[key].items()}
    return Result.from_dict(decoded)


def failure_message(data: Mapping[str, Any]) -> str:
    """The simulator's message of a failed result: its status plus each experiment's."""
    parts = [str(data.get("status") or "simulation failed")]
    for exp in data.get("results") or []:
        status = str(exp.get("status") or "")
        core = status.removeprefix("ERROR:").strip()
        if exp.get("success") is False and core and core not in parts[0]:
            parts.append(status)
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# options


def _blocks(instruction: CircuitInstruction) -> tuple[QuantumCircuit, ...]:
    """The circuit blocks of a control-flow instruction; () for any other (without building
    a gate's Python object)."""
    if instruction.name not in CONTROL_FLOW_OP_NAMES:
        return ()
    return tuple(getattr(instruction.operation, "blocks", ()))


def _unsupported(target: Target, circuit: QuantumCircuit,
                 qubit_map: Sequence[int] | None = None,
                 supported: set[tuple[str, Any]] | None = None,
                 anywhere: dict[str, bool] | None = None) -> str | None:
    """Why the target cannot run the circuit as it stands, or None if it can.

    `supported` remembers what was already found supported, so that a repeated gate is looked
    up once: (name, qubits), or (name, arity) for an operation the Target has on any qubits
    (`anywhere`: per name), whose answer depends on nothing else once the circuit fits the
    device's width.
    """
    if supported is None:
        supported = set()
    if anywhere is None:
        anywhere = {}
    index: dict[Any, int] | None = None
    for instruction in circuit.data:
        name = instruction.name    # not .operation: that builds a Python gate object per call
        if name == "barrier":
            continue
        on_any = anywhere.get(name)
        if on_any is None:
            on_any = anywhere[name] = name in target and \
                target.qargs_for_operation_name(name) is None
        key: tuple[str, Any] | None = (name, len(instruction.qubits)) if on_any else None
        qubits: tuple[int, ...] | None = None
        if key is None or key not in supported or name in CONTROL_FLOW_OP_NAMES:
            if index is None:
                index = {qubit: i for i, qubit in enumerate(circuit.qubits)}
            qubits = tuple(index[qubit] for qubit in instruction.qubits)
            if qubit_map is not None:
                qubits = tuple(qubit_map[q] for q in qubits)
            if key is None:
                key = (name, qubits)
        if key not in supported:
            assert qubits is not None
            if not target.instruction_supported(name, qubits):
                hint = ""
                if name.startswith(("save_", "set_")):
                    hint = " (an Aer instruction: run it on an aer device)"
                where = f" on qubits {list(qubits)}" if name in target else ""
                return f"{name!r}{where} is not supported{hint}"
            supported.add(key)
        if qubits is not None:
            for block in _blocks(instruction):
                reason = _unsupported(target, block, qubits, supported, anywhere)
                if reason:
                    return reason
    return None


def check_fits(target: Target, device: str, circuits: Sequence[QuantumCircuit]) -> None:
    """Refuse circuits wider than the device or using what its Target lacks (not transpiled)."""
    supported: set[tuple[str, Any]] = set()
    anywhere: dict[str, bool] = {}
    for i, circuit in enumerate(circuits):
        if circuit.num_qubits > (target.num_qubits or 0):
            raise InvalidInput(
                f"circuit {circuit.name!r} has {circuit.num_qubits} qubits; device {device} "
                f"has {target.num_qubits}",
                field=f"circuits[{i}]",
            )
        if circuit.num_parameters:
            names = ", ".join(sorted(p.name for p in circuit.parameters)[:5])
            raise InvalidInput(
                f"circuit {circuit.name!r} has unbound parameters ({names}); assign them first",
                field=f"circuits[{i}]",
            )
        reason = _unsupported(target, circuit, supported=supported, anywhere=anywhere)
        if reason:
            raise InvalidInput(
                f"circuit {circuit.name!r} cannot run on device {device}: {reason}; "
                "transpile(circuit, backend) first",
                field=f"circuits[{i}]",
            )


def _mark_subtypes(circuit: QuantumCircuit) -> QuantumCircuit:
    """A copy whose Aer save instructions carry their subtype in the label (see SUBTYPE_MARK)."""
    out = circuit.copy_empty_like()
    for instruction in circuit.data:
        op = instruction.operation
        subtype = getattr(op, "_subtype", None)
        if op.name.startswith("save_") and isinstance(subtype, str):
            op = op.copy()
            op.label = f"{op.label or op.name}{SUBTYPE_MARK}{subtype}"
            instruction = instruction.replace(operation=op)
        elif getattr(op, "blocks", ()):
            op = op.replace_blocks([_mark_subtypes(block) for block in op.blocks])
            instruction = instruction.replace(operation=op)
        out.append(instruction, copy=False)
    return out


def _has_saves(circuit: QuantumCircuit) -> bool:
    names = circuit.count_ops()      # counted without building the instructions
    if any(name.startswith("save_") for name in names):
        return True
    if not CONTROL_FLOW_OP_NAMES.intersection(names):
        return False
    for instruction in circuit.data:
        if instruction.name.startswith("save_") or any(
                _has_saves(b) for b in _blocks(instruction)):
            return True
    return False


def _sendable(circuit: QuantumCircuit) -> QuantumCircuit:
    """The circuit as QPY can carry it: Aer save instructions marked with their subtype, and
    without its metadata when that is not JSON (QPY would refuse).

    The server only echoes metadata back in the result header; BackendSamplerV2 and
    BackendEstimatorV2 keep their own copy, so dropping it loses nothing they use.
    """
    if _has_saves(circuit):
        circuit = _mark_subtypes(circuit)
    try:
        json.dumps(circuit.metadata, allow_nan=False)
    except (TypeError, ValueError):
        circuit = circuit.copy()
        circuit.metadata = {}
    return circuit


# ---------------------------------------------------------------------------------------------
# backend and job


class QhybridBackend(BackendV2):
    """A qhybrid device: `target` from its description, `run()` through a Transport."""

    def __init__(
        self, description: Mapping[str, Any], transport: Transport, **fields: Any
    ) -> None:
        self._device = dict(description)
        self._transport = transport
        self._target = target_from_description(self._device)
        super().__init__(
            name=str(self._device["name"]),
            description=f"qhybrid {self._device['kind']} device {self._device['name']}",
            backend_version="1",
            **fields,
        )

    @property
    def device(self) -> dict[str, Any]:
        """The device description this backend was built from."""
        return dict(self._device)

    @property
    def target(self) -> Target:
        return self._target

    @property
    def max_circuits(self) -> None:
        return None

    @classmethod
    def _default_options(cls) -> Options:
        return Options(**RUN_OPTIONS)

    def run(
        self, run_input: QuantumCircuit | Sequence[QuantumCircuit], **options: Any
    ) -> QhybridJob:
        """Send circuits to the device. Circuits wider than it, or using operations or couplings
        its Target lacks, are refused (InvalidInput) before anything is sent."""
        circuits = [run_input] if isinstance(run_input, QuantumCircuit) else list(run_input)
        if not circuits:
            raise InvalidInput("run() needs at least one circuit", field="circuits")
        for i, circuit in enumerate(circuits):
            if not isinstance(circuit, QuantumCircuit):
                raise InvalidInput(
                    f"circuits[{i}] is a {type(circuit).__name__}, not a QuantumCircuit",
                    field=f"circuits[{i}]",
                )
        check_fits(self.target, self.name, circuits)
        merged = {key: getattr(self.options, key) for key in self.options}
        merged.update(options)
        run_options = validate_run_options(merged)
        payload = encode_circuits([_sendable(circuit) for circuit in circuits])
        task_id = self._transport.submit(self.name, payload, run_options)
        tracking.broadcast(task_id, self.name, run_options.get("shots"))
        return QhybridJob(self, task_id, self._transport, options=run_options)


class QhybridJob(JobV1):
    """A quantum task on a qhybrid device; submitted by `QhybridBackend.run`."""

    def __init__(
        self, backend: QhybridBackend, job_id: str, transport: Transport, **kwargs: Any
    ) -> None:
        super().__init__(backend, job_id, **kwargs)
        self._transport = transport
        self._result: Result | None = None

    def submit(self) -> None:
        raise Conflict("a QhybridJob is submitted by QhybridBackend.run(); submit() does nothing")

    def status(self) -> JobStatus:
        if self._result is not None:
            return JobStatus.DONE
        status = self._transport.status(self.job_id())
        try:
            return _JOB_STATUS[status]
        except KeyError:
            raise QhybridError(f"task {self.job_id()} has unknown status {status!r}") from None

    def result(self, timeout: float | None = None) -> Result:
        """Wait for the task; raises TaskFailed with the simulator's message if it failed."""
        if self._result is None:
            if timeout is not None and (math.isnan(timeout) or timeout < 0):
                raise InvalidInput(f"timeout must be a non-negative number, got {timeout!r}")
            data = self._transport.result(self.job_id(), timeout)
            seconds = data.get("time_taken")
            tracking.broadcast(self.job_id(), self.backend().name, None,
                               "COMPLETED" if data.get("success", False) else "FAILED",
                               float(seconds) if isinstance(seconds, int | float) else None)
            if not data.get("success", False):
                raise TaskFailed(failure_message(data))
            result = result_from_json(data)
            result.job_id = self.job_id()
            self._result = result
        return self._result

    def cancel(self) -> None:
        self._transport.cancel(self.job_id())
