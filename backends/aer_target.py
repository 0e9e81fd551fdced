"""What an aer device accepts: exactly what `AerSimulator(method=...)` offers, from Aer itself.

`aer_operations(method)` lists the operations of Aer's own Target for the method, as JSON that
`qhybrid.backend.target_from_description` turns back into a Target (without qiskit-aer where it
can: Aer's own classes are used when importable, a named placeholder otherwise).

Aer's save instructions (``save_statevector`` ...) cross QPY as plain instructions that keep
their name, label and parameters but lose Aer's ``_subtype`` (single, per shot, conditional ...).
`qhybrid.backend` appends the subtype to the label before sending (`SUBTYPE_MARK`);
`restore_save_instructions` puts it back on the device worker. That attribute is Aer's private
one: this module is the one adapter, and `tests/test_backends.py` runs per-shot and conditional
saves through the round trip so a change in Aer is noticed.
"""

from __future__ import annotations

from functools import cache

from qiskit.circuit import Instruction, QuantumCircuit
from qiskit.circuit.controlflow import CONTROL_FLOW_OP_NAMES

from qhybrid.backend import SUBTYPE_MARK

__all__ = ["aer_operations", "restore_save_instructions"]

# The subtype an Aer save instruction has by default, for circuits from clients that did not
# mark it (a state is saved once; probabilities and expectation values are averaged).
_AVERAGED = ("save_density_matrix", "save_probabilities", "save_probabilities_dict",
             "save_amplitudes_sq", "save_expval", "save_expval_var")


@cache
def aer_operations(method: str, device: str = "CPU") -> tuple[tuple[str, str | None], ...]:
    """(name, class path) of every operation `AerSimulator(method=method).target` holds.

    The class path is None for a fixed standard gate (``u3``, ``cx`` ...: an instance on all
    qubits) and ``module.QualName`` otherwise (``unitary``, ``mcx``, ``save_statevector`` ...).
    """
    from qiskit.circuit.library import get_standard_gate_name_mapping
    from qiskit_aer import AerSimulator

    standard = get_standard_gate_name_mapping()
    target = AerSimulator(method=method, device=device).target
    out: list[tuple[str, str | None]] = []
    for name in sorted(target.operation_names):
        op = target.operation_from_name(name)
        if not isinstance(op, type) and name in standard:
            out.append((name, None))
        else:   # variadic, or a gate only Aer defines (cu2 ...): offered by name
            cls = op if isinstance(op, type) else type(op)
            out.append((name, f"{cls.__module__}.{cls.__qualname__}"))
    return tuple(out)


def _restore(circuit: QuantumCircuit) -> None:
    for instruction in circuit.data:
        if instruction.is_standard_gate():   # .operation would build a gate object to drop
            continue
        op = instruction.operation
        if type(op) is Instruction and op.name.startswith("save_"):
            label, mark, subtype = (op.label or "").rpartition(SUBTYPE_MARK)
            if not mark:
                label, subtype = op.label or "", ""
            op._subtype = subtype or ("average" if op.name in _AVERAGED else "single")  # type: ignore[attr-defined]
            op.label = label or None
        for block in getattr(op, "blocks", ()):
            _restore(block)


def restore_save_instructions(circuits: list[QuantumCircuit]) -> list[QuantumCircuit]:
    """Give Aer's save instructions that came through QPY the subtype Aer reads (in place)."""
    for circuit in circuits:
        names = circuit.count_ops()     # counted without building the instructions
        if any(name.startswith("save_") for name in names) or \
                CONTROL_FLOW_OP_NAMES.intersection(names):
            _restore(circuit)
    return circuits
