"""The device registry: named devices a quantum task can run on, and their JSON descriptions.

Three kinds of device:

* ``aer``: a plain qiskit-aer simulator with one method, ideal, no coupling restriction; its
  Target is what ``AerSimulator(method=...)`` accepts (`backends.aer_target`). The defaults are
  shared: jobs that name one do not reserve it. ``device="GPU"`` ones need a worker host with an
  NVIDIA GPU and qiskit-aer-gpu.
* ``generic``: a hardware-like device, ``GenericBackendV2`` with a realistic coupling map
  (heavy-hex, never the fully connected default), fixed seed (so its error rates and the Target a
  client rebuilds are reproducible) and, with ``noise``, its noise model on aer.
* ``fake``: a copy of an IBM device from qiskit-ibm-runtime's calibration snapshots
  (`backends.ibm_fakes`): its coupling map, basis, durations and noise. Named ``fake_torino``,
  and selectable as ``ibm_torino`` too (`resolve_name`).

Default sizes: statevector-like methods 30 qubits (16 GiB of amplitudes, the default memory
allowance), density matrix 15 (16 GiB too), matrix product state 100 (its cost depends on
entanglement, not width), stabilizer 1000 (Clifford only, about n^2 bits). Memory is checked per
task by `backends.execute.check_circuits` against ``max_memory_bytes``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from qhybrid.errors import InvalidInput, NotFound

__all__ = [
    "DEFAULT_MAX_MEMORY_BYTES",
    "DeviceRegistry",
    "DeviceSpec",
    "MAX_SHOTS",
    "default_registry",
    "describe",
    "eagle_127_edges",
    "falcon_27_edges",
    "heavy_hex_edges",
    "load_devices",
    "resolve_name",
]

Kind = Literal["aer", "generic", "fake"]
KINDS = ("aer", "generic", "fake")
DEVICES = ("CPU", "GPU")   # where aer simulates
METHODS = ("automatic", "statevector", "density_matrix", "matrix_product_state", "stabilizer")
COUPLINGS = ("heavy_hex", "line", "grid", "full")

#: What one task may use on a device worker unless the device says otherwise.
DEFAULT_MAX_MEMORY_BYTES = 16 * 1024**3
#: The most shots one quantum task may ask for (memory=True returns one string per shot).
MAX_SHOTS = 1_000_000
#: Device names end up in queue names (``device.<name>``).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

AER_DEFAULT_QUBITS = {"automatic": 30, "statevector": 30, "density_matrix": 15,
                      "matrix_product_state": 100, "stabilizer": 1000}
GENERIC_BASIS_GATES = ("cx", "id", "rz", "sx", "x")  # IBM Falcon
EAGLE_BASIS_GATES = ("ecr", "id", "rz", "sx", "x")   # IBM Eagle

Edges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class DeviceSpec:
    """One device. `edges` holds both directions of each coupling; None means no restriction."""

    name: str
    kind: Kind
    num_qubits: int
    method: str = "automatic"
    noise: bool = False
    seed: int = 0  # fixes a generic device's random error rates; unused by aer devices
    shared: bool = False  # jobs naming a shared device don't reserve it
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES
    basis_gates: tuple[str, ...] = ()
    edges: Edges | None = None
    control_flow: bool = False
    device: str = "CPU"   # aer's device option: CPU, or GPU (qiskit-aer-gpu on an NVIDIA GPU)
    snapshot: str = ""    # fake devices: the qiskit-ibm-runtime backend name (fake_torino)
    aliases: tuple[str, ...] = ()   # other names that select the device (ibm_torino)
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        where = f"device {self.name!r}"
        if not isinstance(self.name, str) or not re.match(NAME_PATTERN, self.name):
            raise InvalidInput(f"{where}: name must match {NAME_PATTERN}")
        if self.kind not in KINDS:
            raise InvalidInput(f"{where}: kind must be one of {', '.join(KINDS)}")
        if self.method not in METHODS:
            raise InvalidInput(f"{where}: method must be one of {', '.join(METHODS)}")
        if self.num_qubits < 1:
            raise InvalidInput(f"{where}: num_qubits must be positive")
        if self.max_memory_bytes < 1:
            raise InvalidInput(f"{where}: max_memory_bytes must be positive")
        if self.device not in DEVICES:
            raise InvalidInput(f"{where}: device must be one of {', '.join(DEVICES)}")
        if self.kind == "aer":
            if self.noise:
                raise InvalidInput(f"{where}: aer devices are ideal; use kind generic for noise")
            if self.edges is not None:
                raise InvalidInput(f"{where}: aer devices have no coupling map")
        elif self.kind == "fake":
            if not self.snapshot:
                raise InvalidInput(f"{where}: fake devices name their snapshot")
        else:
            if not self.basis_gates:
                raise InvalidInput(f"{where}: needs basis_gates")
            if not self.edges:
                raise InvalidInput(f"{where}: generic devices need a coupling map")
            if any(not (0 <= q < self.num_qubits) for edge in self.edges for q in edge):
                raise InvalidInput(f"{where}: coupling map names qubits outside 0..{self.num_qubits - 1}")


def describe(spec: DeviceSpec, operations: bool = True) -> dict[str, Any]:
    """JSON description from which `qhybrid.backend.target_from_description` rebuilds the Target.

    An aer device lists Aer's own operations for its method (loading qiskit-aer); with
    `operations=False` the list is left to the process that builds the Target (a job's
    supervisor never loads qiskit: `qhybrid.devices.get_backend` fills it in the job).
    """
    desc: dict[str, Any] = {
        "name": spec.name,
        "kind": spec.kind,
        "method": spec.method,
        "num_qubits": spec.num_qubits,
        "basis_gates": list(spec.basis_gates),
        "coupling_map": None if spec.edges is None else [list(edge) for edge in spec.edges],
        "control_flow": spec.control_flow,
        "seed": spec.seed,
        "noise": spec.noise,
        "shared": spec.shared,
        "max_memory_bytes": spec.max_memory_bytes,
        "device": spec.device,
        "snapshot": spec.snapshot or None,
        "aliases": list(spec.aliases),
        "description": spec.description,
    }
    if spec.kind == "aer" and operations:
        add_aer_operations(desc)
    return desc


def add_aer_operations(desc: dict[str, Any]) -> dict[str, Any]:
    """Put Aer's operations for an aer description's method into it (imports qiskit-aer).

    Configured ``basis_gates`` restrict the standard gates to those; every other operation Aer
    offers (save instructions, unitary, initialize, control flow ...) stays.
    """
    from backends.aer_target import aer_operations

    ops = aer_operations(str(desc["method"]))
    wanted = set(desc.get("basis_gates") or ())
    gate_names = [name for name, path in ops if path is None and name not in _NON_GATES]
    if wanted:
        unsupported = wanted - {name for name, _ in ops}
        if unsupported:
            raise InvalidInput(f"device {desc['name']!r}: {desc['method']} does not support "
                               f"{', '.join(sorted(unsupported))}")
        ops = tuple((name, path) for name, path in ops
                    if name in wanted or path is not None or name in _NON_GATES)
    else:
        desc["basis_gates"] = gate_names
    desc["operations"] = [[name, path] for name, path in ops
                          if desc.get("control_flow") or name not in _CONTROL_FLOW_NAMES]
    return desc


_NON_GATES = frozenset({"measure", "reset", "delay", "barrier"})
_CONTROL_FLOW_NAMES = frozenset({"if_else", "while_loop", "for_loop", "switch_case",
                                 "break_loop", "continue_loop", "store"})


class DeviceRegistry:
    """Devices by name."""

    def __init__(self, specs: Iterable[DeviceSpec] = ()) -> None:
        self._specs: dict[str, DeviceSpec] = {}
        self._aliases: dict[str, str] = {}
        for spec in specs:
            self._specs[spec.name] = spec
        for spec in self._specs.values():
            for alias in spec.aliases:
                if alias not in self._specs:
                    self._aliases.setdefault(alias, spec.name)

    def get(self, name: str) -> DeviceSpec:
        """The device by its name or an alias (``ibm_torino`` for ``fake_torino``)."""
        spec = self.find(name)
        if spec is None:
            raise NotFound(f"unknown device {name!r}; devices: {', '.join(self.names())}",
                           field="device")
        return spec

    def find(self, name: object) -> DeviceSpec | None:
        if not isinstance(name, str):
            return None
        spec = self._specs.get(name)
        if spec is None:
            spec = self._specs.get(self._aliases.get(name, ""))
        return spec

    def names(self) -> list[str]:
        return list(self._specs)

    def describe_all(self) -> list[dict[str, Any]]:
        return [describe(spec) for spec in self._specs.values()]

    def __contains__(self, name: object) -> bool:
        return self.find(name) is not None

    def __iter__(self) -> Iterator[DeviceSpec]:
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)


# ---------------------------------------------------------------------------------------------
# coupling maps


def _sorted_undirected(edges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    return sorted({(min(a, b), max(a, b)) for a, b in edges})


def _both_directions(edges: Iterable[tuple[int, int]]) -> Edges:
    undirected = _sorted_undirected(edges)
    return tuple(sorted([*undirected, *((b, a) for a, b in undirected)]))


# IBM Falcon r4 (ibmq_montreal, ibm_cairo, ...): 27 qubits, two and a half heavy hexagons.
_FALCON_27 = ((0, 1), (1, 2), (1, 4), (2, 3), (3, 5), (4, 7), (5, 8), (6, 7), (7, 10), (8, 9),
              (8, 11), (10, 12), (11, 14), (12, 13), (12, 15), (13, 14), (14, 16), (15, 18),
              (16, 19), (17, 18), (18, 21), (19, 20), (19, 22), (21, 23), (22, 25), (23, 24),
              (24, 25), (25, 26))


def falcon_27_edges() -> list[tuple[int, int]]:
    """Undirected edges of IBM's 27-qubit Falcon heavy-hex layout (28 couplings)."""
    return list(_FALCON_27)


def eagle_127_edges() -> list[tuple[int, int]]:
    """Undirected edges of IBM's 127-qubit Eagle heavy-hex layout (144 couplings).

    Seven rows (14, 15, 15, 15, 15, 15, 14 qubits; the last row starts one column in), each
    pair of rows joined by 4 bridge qubits, at columns 0, 4, 8, 12 below even rows and
    2, 6, 10, 14 below odd ones. Numbering follows ibm_washington / ibm_sherbrooke.
    """
    layout = [(14, 0), (15, 0), (15, 0), (15, 0), (15, 0), (15, 0), (14, 1)]  # (length, first col)
    edges: list[tuple[int, int]] = []
    rows: list[dict[int, int]] = []
    bridges: list[tuple[int, tuple[int, ...], list[int]]] = []  # (upper row, columns, qubits)
    qubit = 0
    for index, (length, first) in enumerate(layout):
        row = {first + col: qubit + col for col in range(length)}
        qubit += length
        edges += [(row[col], row[col + 1]) for col in range(first, first + length - 1)]
        rows.append(row)
        if index < len(layout) - 1:
            below = (0, 4, 8, 12) if index % 2 == 0 else (2, 6, 10, 14)
            bridges.append((index, below, list(range(qubit, qubit + 4))))
            qubit += 4
    for index, cols, qubits in bridges:
        for col, bridge in zip(cols, qubits, strict=True):
            edges += [(rows[index][col], bridge), (bridge, rows[index + 1][col])]
    return _sorted_undirected(edges)


def heavy_hex_edges(num_qubits: int) -> list[tuple[int, int]]:
    """Undirected heavy-hex edges on exactly `num_qubits` qubits.

    27 and 127 give IBM's Falcon and Eagle layouts; other sizes take a connected piece
    (breadth-first from qubit 0) of the smallest `CouplingMap.from_heavy_hex(d)` lattice that
    holds them, renumbered 0..n-1.
    """
    if num_qubits == 27:
        return falcon_27_edges()
    if num_qubits == 127:
        return eagle_127_edges()
    from qiskit.transpiler import CouplingMap

    distance = 3
    while (5 * distance**2 - 2 * distance - 1) // 2 < num_qubits:
        distance += 2
    lattice = _sorted_undirected(CouplingMap.from_heavy_hex(distance).get_edges())
    neighbours: dict[int, set[int]] = {}
    for a, b in lattice:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    order, seen = [0], {0}
    for node in order:
        for other in sorted(neighbours[node]):
            if other not in seen and len(order) < num_qubits:
                seen.add(other)
                order.append(other)
    index = {node: i for i, node in enumerate(order)}
    return _sorted_undirected((index[a], index[b]) for a, b in lattice
                              if a in index and b in index)


def _grid_edges(rows: int, cols: int) -> list[tuple[int, int]]:
    edges = [(r * cols + c, r * cols + c + 1) for r in range(rows) for c in range(cols - 1)]
    edges += [(r * cols + c, (r + 1) * cols + c) for r in range(rows - 1) for c in range(cols)]
    return edges


def _coupling_edges(kind: str, num_qubits: int, rows: int | None, cols: int | None,
                    where: str) -> Edges:
    if kind == "heavy_hex":
        return _both_directions(heavy_hex_edges(num_qubits))
    if kind == "line":
        return _both_directions((q, q + 1) for q in range(num_qubits - 1))
    if kind == "full":
        return _both_directions((a, b) for a in range(num_qubits) for b in range(a + 1, num_qubits))
    if kind == "grid":
        if rows is None and cols is None:
            rows = max(r for r in range(1, int(num_qubits**0.5) + 1) if num_qubits % r == 0)
        rows = rows if rows is not None else num_qubits // int(cols or 1)
        cols = cols if cols is not None else num_qubits // rows
        if rows * cols != num_qubits:
            raise InvalidInput(f"{where}: grid rows * cols must equal num_qubits ({num_qubits})")
        return _both_directions(_grid_edges(rows, cols))
    raise InvalidInput(f"{where}: coupling must be one of {', '.join(COUPLINGS)}")


# ---------------------------------------------------------------------------------------------
# defaults and configuration


def _aer(name: str, method: str, description: str, device: str = "CPU") -> DeviceSpec:
    return DeviceSpec(name=name, kind="aer", method=method, num_qubits=AER_DEFAULT_QUBITS[method],
                      shared=True, control_flow=True, device=device, description=description)


def _fake_specs() -> list[DeviceSpec]:
    """A device per IBM fake backend the installed qiskit-ibm-runtime ships."""
    from backends.ibm_fakes import PREFIX, snapshots

    specs = []
    for snap in snapshots():
        short = snap.name.removeprefix(PREFIX)
        aliases = tuple(dict.fromkeys(a for a in (snap.ibm_name, f"ibm_{short}")
                                      if a != snap.name))
        specs.append(DeviceSpec(
            name=snap.name, kind="fake", num_qubits=snap.num_qubits, noise=True,
            basis_gates=snap.basis_gates, edges=snap.edges or None, snapshot=snap.name,
            aliases=aliases, control_flow=True,
            description=f"Copy of {snap.ibm_name} ({snap.num_qubits} qubits): its coupling "
                        "map, basis, durations and noise from qiskit-ibm-runtime's snapshot"))
    return specs


@cache
def _default_specs() -> tuple[DeviceSpec, ...]:
    return (
        _aer("aer_simulator", "automatic", "Aer, method chosen per circuit"),
        _aer("aer_statevector", "statevector", "Aer statevector"),
        _aer("aer_density_matrix", "density_matrix", "Aer density matrix"),
        _aer("aer_mps", "matrix_product_state", "Aer matrix product state"),
        _aer("aer_stabilizer", "stabilizer", "Aer stabilizer (Clifford circuits)"),
        _aer("aer_statevector_gpu", "statevector", "Aer statevector on an NVIDIA GPU "
             "(a device worker on a host with one and qiskit-aer-gpu)", device="GPU"),
        DeviceSpec(name="generic_heavy_hex_27", kind="generic", num_qubits=27, noise=True,
                   seed=27, basis_gates=GENERIC_BASIS_GATES,
                   edges=_both_directions(falcon_27_edges()),
                   description="Falcon-like 27-qubit heavy-hex device with noise"),
        DeviceSpec(name="generic_heavy_hex_127", kind="generic", num_qubits=127, noise=True,
                   seed=127, basis_gates=EAGLE_BASIS_GATES,
                   edges=_both_directions(eagle_127_edges()),
                   description="Eagle-like 127-qubit heavy-hex device with noise"),
        *_fake_specs(),
    )


def resolve_name(name: str, registry: DeviceRegistry | None = None) -> DeviceSpec:
    """The device an IBM or fake backend name (``ibm_torino``, ``fake_torino``, ``FakeTorino``)
    or one of ours selects; NotFound listing the devices otherwise."""
    registry = registry if registry is not None else default_registry()
    spec = registry.find(name)
    if spec is None and isinstance(name, str) and name.startswith("Fake"):
        spec = registry.find("fake_" + name.removeprefix("Fake").lower())
    return spec if spec is not None else registry.get(name)


def default_registry() -> DeviceRegistry:
    """The built-in devices."""
    return DeviceRegistry(_default_specs())


_DEVICE_KEYS = {"kind", "method", "num_qubits", "size", "coupling", "rows", "cols", "edges",
                "noise", "seed", "shared", "max_memory_bytes", "basis_gates", "control_flow",
                "device", "description"}


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str,
           default: Any) -> Any:
    value = table.get(key, default)
    if value is not default and (not isinstance(value, kind) or
                                 (kind is int and isinstance(value, bool))):
        raise InvalidInput(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


def spec_from_table(name: str, table: Mapping[str, Any]) -> DeviceSpec:
    """A DeviceSpec from one ``[devices.<name>]`` TOML table."""
    where = f"device {name!r}"
    unknown = set(table) - _DEVICE_KEYS
    if unknown:
        raise InvalidInput(f"{where}: unknown keys {', '.join(sorted(unknown))}; "
                           f"allowed: {', '.join(sorted(_DEVICE_KEYS))}")
    kind = _typed(table, "kind", str, where, "generic")
    method = _typed(table, "method", str, where, "automatic")
    if method not in METHODS:
        raise InvalidInput(f"{where}: method must be one of {', '.join(METHODS)}")
    size = table.get("num_qubits", table.get("size"))
    if size is None and kind == "aer":
        size = AER_DEFAULT_QUBITS[method]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InvalidInput(f"{where}: num_qubits (or size) must be a positive integer")
    edges: Edges | None = None
    if kind == "generic":
        if "edges" in table:
            raw = table["edges"]
            if not isinstance(raw, list) or not all(
                    isinstance(e, list) and len(e) == 2 and all(isinstance(q, int) for q in e)
                    for e in raw):
                raise InvalidInput(f"{where}: edges must be a list of [a, b] qubit pairs")
            edges = _both_directions((a, b) for a, b in raw)
        else:
            coupling = _typed(table, "coupling", str, where, "heavy_hex")
            edges = _coupling_edges(coupling, size, _typed(table, "rows", int, where, None),
                                    _typed(table, "cols", int, where, None), where)
    elif "coupling" in table or "edges" in table:
        raise InvalidInput(f"{where}: aer devices have no coupling map")
    if kind == "fake":
        raise InvalidInput(f"{where}: fake devices come from qiskit-ibm-runtime; name one of them "
                           "(fake_torino ...) instead of configuring it")
    default_basis = GENERIC_BASIS_GATES if kind == "generic" else ()
    basis = _typed(table, "basis_gates", list, where, list(default_basis))
    return DeviceSpec(
        name=name,
        kind=kind,
        method=method,
        num_qubits=size,
        noise=_typed(table, "noise", bool, where, kind == "generic"),
        seed=_typed(table, "seed", int, where, 0),
        shared=_typed(table, "shared", bool, where, kind == "aer"),
        max_memory_bytes=_typed(table, "max_memory_bytes", int, where, DEFAULT_MAX_MEMORY_BYTES),
        basis_gates=tuple(str(gate) for gate in basis),
        edges=edges,
        control_flow=_typed(table, "control_flow", bool, where, kind == "aer"),
        device=_typed(table, "device", str, where, "CPU"),
        description=_typed(table, "description", str, where, ""),
    )


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a one-line TOML text too long for a file name
        return False


def load_devices(source: str | Path, base: DeviceRegistry | None = None) -> DeviceRegistry:
    """The default devices (or `base`) plus those of a TOML file or text.

    Each ``[devices.<name>]`` table sets kind ("generic" or "aer"), num_qubits (or size),
    coupling (heavy_hex | line | grid with rows/cols | full) or edges, noise, seed, shared,
    method, max_memory_bytes, basis_gates, control_flow, device (CPU or GPU). A name already
    known is replaced.
    """
    if isinstance(source, Path) or ("\n" not in source and _is_file(source)):
        text = Path(source).read_text()
    else:
        text = str(source)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"device configuration is not valid TOML: {exc}") from exc
    unknown = set(document) - {"devices"}
    if unknown:
        raise InvalidInput(f"device configuration: unknown tables {', '.join(sorted(unknown))}")
    devices = document.get("devices", {})
    registry = DeviceRegistry(base if base is not None else _default_specs())
    specs = list(registry)
    for name, table in devices.items():
        if not isinstance(table, dict):
            raise InvalidInput(f"device {name!r}: expected a [devices.{name}] table")
        specs.append(spec_from_table(name, table))
    return DeviceRegistry(specs)
