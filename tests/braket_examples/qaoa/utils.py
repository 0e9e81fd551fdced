"""The graph and the cost Hamiltonian of the QAOA example (max clique as Braket's uses
PennyLane's qml.qaoa.max_clique; here MaxCut on a small graph, in Qiskit terms)."""

from __future__ import annotations

from qiskit.quantum_info import SparsePauliOp


def ring_graph(n_nodes: int, n_edges: int, seed: int) -> list[tuple[int, int]]:
    import random

    edges = [(i, (i + 1) % n_nodes) for i in range(n_nodes)]
    rng = random.Random(seed)
    extra = [(a, b) for a in range(n_nodes) for b in range(a + 2, n_nodes)
             if (a, b) != (0, n_nodes - 1)]
    rng.shuffle(extra)
    return edges + extra[:max(0, n_edges - n_nodes)]


def maxcut_hamiltonian(n_nodes: int, edges: list[tuple[int, int]]) -> SparsePauliOp:
    """Minimised by a maximum cut: sum over edges of (Z_a Z_b - 1) / 2."""
    terms = []
    for a, b in edges:
        label = ["I"] * n_nodes
        label[n_nodes - 1 - a] = label[n_nodes - 1 - b] = "Z"
        terms.append(("".join(label), 0.5))
    terms.append(("I" * n_nodes, -0.5 * len(edges)))
    return SparsePauliOp.from_list(terms).simplify()
