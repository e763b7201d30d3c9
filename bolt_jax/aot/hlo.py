"""What a compiled (SPMD-partitioned) HLO module does per step, read from its text: the collectives with their bytes,
and the bytes it moves through HBM, each counted as many times as the while loops around it run.

XLA's own `cost_analysis()` counts a while body once (checked on the TPU and CPU compilers with jax 0.12: a 5-step
`lax.scan` of a matmul reports the FLOPs of one step), but the train step scans over micro-batches and the model may
scan over layers. So this module builds the computation call graph (`body=`, `condition=`, `calls=`, `to_apply=`,
`branch_computations=`, ...) and gives every computation a multiplier: 1 for ENTRY, times a loop's trip count for its
body. The trip count is `known_trip_count` from the while's backend_config where the compiler writes it (the CPU
compiler does), else read from the loop condition (`counter < N` against a constant, the counter's start taken from
the while's initial tuple; the TPU compiler leaves backend_config without it). A loop whose count cannot be read
(the decode loop stops when no slot is live) runs as often as the caller says (`unknown_trips`, default once), and
`Analysis.unknown_loops` says how many there were.

Bytes of a collective are those of the full array it works on (an all-gather's output, a reduce-scatter's input);
`ring_bytes` is what each device sends with the ring algorithm: 2(n-1)/n of it for all-reduce, (n-1)/n for
all-gather, reduce-scatter and all-to-all, all of it for collective-permute, over groups of n devices.

HBM bytes are a roofline's: each instruction of a control-flow computation (ENTRY, loop bodies, branches) reads its
operands and writes its result once; a fusion reads only the slice of an operand it dynamic-slices and writes only
the update of a buffer it updates in place (dynamic-update-slice, scatter); an array moves the bytes its layout
stores (on a TPU its two most minor dims padded to whole tiles: `Array.stored_nbytes`); arrays the layout places
outside HBM (`S(n)` with n != 0: TPU VMEM, SMEM) are not counted, nor, on request (`attention_len`), the attention
score matrices the XLA reference attention writes out where a GPU's flash kernel keeps them on chip. XLA's cost analysis
("bytes accessed", printed beside it) is far higher on the TPU compiler (63 MB against 1.8 MB for the tiny test
model's step, whose state is 0.6 MB per chip), which suggests it counts on-chip traffic too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# Ops that move no HBM bytes of their own: bookkeeping, control flow (their computations are counted instead), and
# the second half of async pairs (counted at the start).
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
         "after-all", "partition-id", "replica-id", "opt-barrier", "add-dependency", "domain", "async-start",
         "async-update", "async-done", "all-reduce-done", "all-gather-done", "collective-permute-done",
         "copy-done", "send-done", "recv-done"}
# Ops that update their first operand in place: opcode -> the operand index of the update they write.
_IN_PLACE = {"dynamic-update-slice": 1, "scatter": 2}
_FUSIONS = {"fusion", "fusion-start"}
# Callers whose computations run as control flow (their instructions touch HBM); fusions and reduction lambdas don't.
_CONTROL_CALLERS = {"while", "conditional", "call", "async-start"}
_CALL_ATTR = re.compile(r"\b(condition|body|to_apply|calls|branch_computations|true_computation|false_computation|"
                        r"called_computations)=(\{[^}]*\}|%[\w.\-]+)")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_OPERAND = re.compile(r"%([\w.\-]+(?:#\d+)?)")  # `%name`, or `%tuple#k`: element k of a tuple
_LAYOUT = re.compile(r"\{[^{}]*\}")
_MIRROR = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE", "NE": "NE", "EQ": "EQ"}


@dataclass(frozen=True)
class Array:
    dtype: str
    dims: tuple[int, ...]
    memory_space: int = 0
    stored_dims: tuple[int, ...] | None = None  # the dims its layout's tiling pads them to (TPU), None: as `dims`

    @property
    def nbytes(self) -> float:
        """Its logical bytes: every element once."""
        return self._bytes(self.dims)

    @property
    def stored_nbytes(self) -> float:
        """The bytes it takes in memory: on a TPU the tiled layout pads its two most minor dims to whole tiles (a bf16
        [.., 4, 64] in T(4,128) tiles takes twice its logical bytes: head_dim 64 fills half of the 128 lanes)."""
        return self._bytes(self.stored_dims or self.dims)

    def _bytes(self, dims: tuple[int, ...]) -> float:
        if self.dtype in ("token", "opaque"):
            return 0.0
        bits = re.match(r"[a-z]+?(\d+)", self.dtype)
        size = 1
        for d in dims:
            size *= d
        return size * (int(bits.group(1)) if bits else 8) / 8  # pred: one byte

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.dims))}]"


def _tiled(dims: tuple[int, ...], layout: str) -> tuple[int, ...] | None:
    """`dims` padded to the layout's first tile, `{3,2,1,0:T(4,128)(2,1)}`: its last tile dim pads the most minor
    dim (the first of minor_to_major), the one before it the next; None without a tile (CPU and GPU layouts)."""
    m = re.match(r"\{([\d,]*):T\(([\d,]+)\)", layout)
    if not m or not dims:
        return None
    minor_to_major = [int(x) for x in m.group(1).split(",") if x]
    tile = [int(x) for x in m.group(2).split(",")]
    out = list(dims)
    for dim, t in zip(minor_to_major, reversed(tile), strict=False):
        out[dim] = -(-out[dim] // t) * t
    return tuple(out)


def arrays_of(shape: str) -> list[Array]:
    """Every array in a shape string, tuples flattened in order: `(bf16[2,3]{1,0}, s32[])` -> two Arrays."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        space = re.search(r"S\((\d+)\)", layout or "")
        sizes = tuple(int(d.lstrip("<=")) for d in dims.split(",") if d.strip())
        out.append(Array(dtype, sizes, int(space.group(1)) if space else 0, _tiled(sizes, layout or "")))
    return out


@dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    args: str  # what the parentheses after the opcode hold: operands, or a constant's literal, a parameter's index
    attrs: str  # everything after them
    root: bool = False

    def callees(self) -> list[str]:
        return [n for _, group in _CALL_ATTR.findall(self.attrs) for n in re.findall(r"%([\w.\-]+)", group)]


@dataclass
class Computation:
    name: str
    entry: bool
    instructions: list[Instruction] = field(default_factory=list)
    by_name: dict[str, Instruction] = field(default_factory=dict)

    def add(self, inst: Instruction) -> None:
        self.instructions.append(inst)
        self.by_name[inst.name] = inst

    @property
    def root(self) -> Instruction:
        return next((i for i in self.instructions if i.root), self.instructions[-1])

    def parameter(self, index: int) -> Instruction | None:
        return next((i for i in self.instructions if i.opcode == "parameter" and i.args == str(index)), None)

    def users(self, name: str) -> Iterator[Instruction]:
        return (i for i in self.instructions if name in i.operands)


# ------------------------------------------------------------------------------------------------------ parsing
def _balanced(text: str, start: int) -> str:
    """The bracketed group starting at `text[start]` (`(...)`, `{...}`, `[...]`), or the token up to a space."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    if start >= len(text) or text[start] not in pairs:
        return re.match(r"\S*", text[start:]).group(0)
    depth = 0
    for i in range(start, len(text)):
        if text[i] in pairs:
            depth += 1
        elif text[i] in pairs.values():
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return text[start:]


def _parse_instruction(line: str) -> Instruction | None:
    m = _INSTRUCTION.match(line)
    if not m:
        return None
    root, name, rest = bool(m.group(1)), m.group(2), m.group(3)
    shape = _balanced(rest, 0)
    after = rest[len(shape):].lstrip()
    op = re.match(r"([\w\-]+)\(", after)
    if not op:
        return None
    args = _balanced(after, op.end() - 1)
    attrs = after[op.end() - 1 + len(args):].lstrip(", ")
    return Instruction(name, shape, op.group(1), _OPERAND.findall(args), args[1:-1].strip(), attrs, root)


def _tuple_elements(shape: str) -> list[str]:
    """The top-level elements of a tuple shape: `(f32[2], (s32[], u8[4]))` -> ["f32[2]", "(s32[], u8[4])"]."""
    inner, out, depth, start = shape.strip()[1:-1], [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(inner[start:i].strip())
            start = i + 1
    tail = re.sub(r"/\*index=\d+\*/", "", inner[start:]).strip()
    return [re.sub(r"/\*index=\d+\*/", "", e).strip() for e in out] + ([tail] if tail else [])


def _add_tuple_elements(comp: Computation) -> None:
    """Operands written `%tuple#k` (XLA's newer printing, as in its dump files, where a get-tuple-element is folded
    into its user) become get-tuple-elements of their own, so an operand is always one instruction's whole result."""
    for inst in list(comp.instructions):
        for operand in inst.operands:
            base, _, k = operand.partition("#")
            if k and operand not in comp.by_name and base in comp.by_name:
                elements = _tuple_elements(comp.by_name[base].shape)
                shape = elements[int(k)] if int(k) < len(elements) else ""
                comp.by_name[operand] = Instruction(operand, shape, "get-tuple-element", [base], f"%{base}",
                                                    f"index={k}")


def parse_module(text: str) -> dict[str, Computation]:
    """The computations of an HLO module's text, in the order printed (callees before their callers)."""
    out: dict[str, Computation] = {}
    current: Computation | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = out.setdefault(header.group(2), Computation(header.group(2), bool(header.group(1))))
            continue
        if line.strip() == "}":
            current = None
            continue
        if current is not None:
            inst = _parse_instruction(line)
            if inst is not None:
                current.add(inst)
    for comp in out.values():
        _add_tuple_elements(comp)
    return out


# ------------------------------------------------------------------------------------------------------ loops
def _scalar_constant(comp: Computation, name: str) -> int | None:
    """The integer a scalar operand holds when it is a constant (through copies, bitcasts and converts)."""
    inst = comp.by_name.get(name)
    while inst is not None and inst.opcode in ("copy", "bitcast", "convert") and inst.operands:
        inst = comp.by_name.get(inst.operands[0])
    if inst is None or inst.opcode != "constant" or not re.fullmatch(r"-?\d+", inst.args):
        return None
    return int(inst.args)


def _tuple_index(comp: Computation, name: str) -> int | None:
    inst = comp.by_name.get(name)
    if inst is None or inst.opcode != "get-tuple-element":
        return None
    m = re.search(r"index=(\d+)", inst.attrs)
    return int(m.group(1)) if m else None


def trip_count(loop: Instruction, caller: Computation, module: dict[str, Computation]) -> int | None:
    """How many times a while loop runs its body: `known_trip_count` in backend_config, else `i < N` (or <=, !=)
    read from the condition, i starting where the initial tuple sets it (a constant, or 0). None when neither."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop.attrs)
    if known:
        return int(known.group(1))
    cond = module.get((re.search(r"condition=%([\w.\-]+)", loop.attrs) or [None, ""])[1])
    if cond is None or not cond.instructions or cond.root.opcode != "compare" or len(cond.root.operands) != 2:
        return None
    direction = (re.search(r"direction=(\w+)", cond.root.attrs) or [None, ""])[1]
    a, b = cond.root.operands
    if _scalar_constant(cond, a) is not None:  # N > i: read as i < N
        a, b, direction = b, a, _MIRROR.get(direction, "")
    index, bound = _tuple_index(cond, a), _scalar_constant(cond, b)
    if index is None or bound is None:
        return None
    init = 0
    init_step = re.search(r'"known_init_step":\{"init":"(-?\d+)"', loop.attrs)
    start = caller.by_name.get(loop.operands[0]) if loop.operands else None
    if init_step:
        init = int(init_step.group(1))
    elif start is not None and start.opcode == "tuple" and index < len(start.operands):
        init = _scalar_constant(caller, start.operands[index]) or 0
    trips = {"LT": bound - init, "NE": bound - init, "LE": bound - init + 1}.get(direction)
    return max(trips, 0) if trips is not None else None


# ------------------------------------------------------------------------------------------------------ call graph
@dataclass
class CallGraph:
    multipliers: dict[str, float]  # computation -> how many times it runs per execution of ENTRY
    control: set[str]  # computations that run as control flow (ENTRY, loop bodies and conditions, branches, calls)
    unknown_loops: int  # while loops whose trip count could not be read (counted `unknown_trips` times)


def call_graph(module: dict[str, Computation], unknown_trips: int = 1) -> CallGraph:
    """Each computation's multiplier: the sum over its call sites of the caller's multiplier, times the trip count for
    a loop body or condition (`unknown_trips` where it cannot be read). Callers come before callees in a topological
    order of the call DAG."""
    entry = next((c for c in module.values() if c.entry), None)
    if entry is None:
        return CallGraph({}, set(), 0)
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:  # post-order DFS: callees first
        seen.add(name)
        for inst in module[name].instructions:
            for callee in inst.callees():
                if callee in module and callee not in seen:
                    visit(callee)
        order.append(name)

    visit(entry.name)
    mult = {name: 0.0 for name in order}
    mult[entry.name] = 1.0
    control, unknown = {entry.name}, 0
    for name in reversed(order):  # callers before callees
        comp = module[name]
        for inst in comp.instructions:
            times = 1
            if inst.opcode == "while":
                trips = trip_count(inst, comp, module)
                unknown += trips is None
                times = unknown_trips if trips is None else trips
            for callee in inst.callees():
                if callee not in mult:
                    continue
                mult[callee] += mult[name] * times
                if inst.opcode in _CONTROL_CALLERS:
                    control.add(callee)
    return CallGraph(mult, control, unknown)


# ------------------------------------------------------------------------------------------------------ collectives
@dataclass(frozen=True)
class Collective:
    kind: str  # all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute
    arrays: str  # the array(s) it works on, e.g. "bf16[2048,5632]"
    group: int  # devices per replica group
    nbytes: float  # the full array: all-gather output, reduce-scatter input
    count: float  # executions per step (loop trip counts multiplied in)

    @property
    def ring_factor(self) -> float:
        n = self.group
        if self.kind == "collective-permute":
            return 1.0
        if n <= 1:
            return 0.0
        return 2 * (n - 1) / n if self.kind == "all-reduce" else (n - 1) / n

    @property
    def ring_bytes(self) -> float:
        """Bytes each device sends per step with the ring algorithm."""
        return self.ring_factor * self.nbytes * self.count


def group_size(inst: Instruction, num_devices: int) -> int:
    """Devices per replica group, from any of the three spellings: `{{0,1},{2,3}}`, `[2,4]<=[8]` (iota: groups of
    4), `mesh['data'=2,'fsdp'=4] {'fsdp'}` (the named axes' product). No groups: all `num_devices`."""
    at = inst.attrs.find("replica_groups=")
    groups = inst.attrs[at + len("replica_groups="):] if at >= 0 else "{}"
    explicit = re.match(r"\{\{([^}]*)\}", groups)
    if explicit:
        return len([x for x in explicit.group(1).split(",") if x.strip()])
    iota = re.match(r"\[([\d,]+)\]<=", groups)
    if iota:
        return int(iota.group(1).split(",")[-1])
    mesh = re.match(r"mesh\[([^\]]*)\]\s*\{([^}]*)\}", groups)
    if mesh:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
        size = 1
        for axis in re.findall(r"'([^']+)'", mesh.group(2)):
            size *= sizes.get(axis, 1)
        return size
    return num_devices  # `{}`: one group of every device


def _collective_arrays(inst: Instruction, kind: str, group: int) -> tuple[list[Array], float]:
    """The arrays a collective works on and their full size in bytes (see the module docstring)."""
    arrays = arrays_of(inst.shape)
    start = inst.opcode.endswith("-start")
    if kind == "collective-permute":  # -start: (operand, output, contexts); sync: the output, as big as the operand
        arrays = arrays[:1]
    elif start and kind in ("all-gather", "reduce-scatter"):  # ((operands...), (outputs...)): the full arrays
        half = len(arrays) // 2
        arrays = arrays[half:] if kind == "all-gather" else arrays[:half]
    size = sum(a.nbytes for a in arrays)
    return arrays, size * group if kind == "reduce-scatter" and not start else size  # a sync one's shape: its shard


def collectives(module: dict[str, Computation], graph: CallGraph, num_devices: int) -> list[Collective]:
    """Every collective of the module (async `-start` forms included, `-done` skipped), with its executions per step.

    One collective can appear in several computations: the TPU compiler's async collective fusions hold it both in
    the fusion that starts it and in the one that overlaps it with compute, under one `channel_id` (the tiny test
    model's train step: 103 collective instructions, 34 channels). A channel counts once, at its largest multiplier."""
    by_channel: dict[str, Collective] = {}
    out = []
    for name, comp in module.items():
        times = graph.multipliers.get(name, 0.0)
        if not times:
            continue
        for inst in comp.instructions:
            kind = inst.opcode.removesuffix("-start")
            if kind not in COLLECTIVES:
                continue
            group = group_size(inst, num_devices)
            arrays, nbytes = _collective_arrays(inst, kind, group)
            found = Collective(kind, ", ".join(map(str, arrays)), group, nbytes, times)
            channel = re.search(r"\bchannel_id=(\d+)", inst.attrs)
            if channel is None:
                out.append(found)
            elif channel.group(1) not in by_channel or by_channel[channel.group(1)].count < times:
                by_channel[channel.group(1)] = found
    return out + list(by_channel.values())


def summarize(found: list[Collective]) -> dict[str, dict[str, float]]:
    """Per kind: ops in the program, executions per step, bytes per step (full arrays) and ring bytes per step."""
    out: dict[str, dict[str, float]] = {}
    for c in found:
        row = out.setdefault(c.kind, {"ops": 0, "executions": 0.0, "bytes": 0.0, "ring_bytes": 0.0})
        row["ops"] += 1
        row["executions"] += c.count
        row["bytes"] += c.nbytes * c.count
        row["ring_bytes"] += c.ring_bytes
    return out


# ------------------------------------------------------------------------------------------------------ HBM bytes
_SCRATCH_TARGETS = ("__cublas$", "__cudnn$")  # custom-call targets whose last result is a workspace


def attention_scores(a: Array, seq_len: int) -> bool:
    """An attention score matrix (or its mask, or its probabilities) of sequences of `seq_len`: an array of 4 or more
    dims (a head axis beside batch and the two positions) of which two are multiples of `seq_len`, whatever the
    layout: [B, K, G, S, T], [B, K, S, G*T]. Activations ([B, S, D], [B, S, H, D], [B, K, G*S, D]) have one such
    dim, even where D = S (TinyLlama at seq 2048)."""
    return len(a.dims) >= 4 and sum(d % seq_len == 0 for d in a.dims) >= 2


class HbmBytes:
    """Counts the HBM bytes of a module's instructions (see the module docstring). `attention_len`: leave out the
    attention scores of sequences of that length (`attention_scores`), which the XLA reference attention writes to
    memory and a fused flash kernel keeps on chip (cpu:N compiles the reference in place of the GPUs' kernels)."""

    def __init__(self, module: dict[str, Computation], attention_len: int = 0):
        self.module, self.attention_len = module, attention_len

    def of(self, shape: str) -> float:
        return self._count(arrays_of(shape))

    def _count(self, arrays: list[Array]) -> float:
        return sum(a.stored_nbytes for a in arrays if a.memory_space == 0
                   and not (self.attention_len and attention_scores(a, self.attention_len)))

    def result(self, inst: Instruction) -> float:
        """Bytes of an instruction's result, less the workspace a GPU library call (cuBLAS, cuDNN) returns as its
        last result (`s8[n]`, 32 MiB per matmul on an H100): scratch it may touch a little of, not an output."""
        arrays = arrays_of(inst.shape)
        if (inst.opcode == "custom-call" and len(arrays) > 1 and arrays[-1].dtype == "s8"
                and any(f'custom_call_target="{t}' in inst.attrs for t in _SCRATCH_TARGETS)):
            arrays = arrays[:-1]
        return self._count(arrays)

    def read(self, comp: Computation, name: str, full: float) -> float:
        """Bytes a fused computation reads of its value `name` (a parameter, or a bitcast of one): the slices it
        dynamic-slices, nothing of a buffer it updates in place, everything otherwise."""
        total = 0.0
        for user in comp.users(name):
            first = user.operands[0] == name
            if user.opcode in ("dynamic-slice", "slice", "gather") and first:
                total += self.of(user.shape)
            elif user.opcode in _IN_PLACE and first:
                continue
            elif user.opcode == "bitcast":
                total += self.read(comp, user.name, full)
            elif user.opcode == "fusion" and user.callees() and user.callees()[0] in self.module:
                inner = self.module[user.callees()[0]]
                param = inner.parameter(user.operands.index(name))
                if param is None:
                    total += full
                elif _forwards(inner, param.name):  # a nested fusion that only re-views it: as its users read it
                    total += self.read(comp, user.name, full)
                else:
                    total += self.read(inner, param.name, full)
            else:
                return full
        return min(total, full)

    def written(self, comp: Computation, inst: Instruction) -> float:
        """Bytes a fused computation writes: the updates of buffers it updates in place, its whole result otherwise."""
        if inst.opcode == "tuple":
            return sum(self.written(comp, comp.by_name[o]) for o in inst.operands if o in comp.by_name)
        if inst.opcode == "bitcast" and inst.operands and inst.operands[0] in comp.by_name:
            return self.written(comp, comp.by_name[inst.operands[0]])
        update = _IN_PLACE.get(inst.opcode)
        if update is not None and len(inst.operands) > update and inst.operands[update] in comp.by_name:
            return self.of(comp.by_name[inst.operands[update]].shape)
        return self.result(inst)

    def instruction(self, comp: Computation, inst: Instruction) -> float:
        operands = [comp.by_name[o] for o in inst.operands if o in comp.by_name]
        # a fusion, or an asynchronous one (the GPU compiler's `fusion-start`: the same fused computation and operands,
        # its shape ((operands), result, context) being no bytes it moves; `fusion-done` moves none)
        fused = self.module.get(inst.callees()[0]) if inst.opcode in _FUSIONS and inst.callees() else None
        if fused is None:
            if inst.opcode == "slice-start":  # ((operand), slice, context): reads the slice, writes it where it goes
                piece = arrays_of(inst.shape)[1]
                return piece.stored_nbytes * (1 + (piece.memory_space == 0))
            if inst.opcode.endswith("-start"):  # the shape holds the operands and the results
                return self.of(inst.shape)
            if inst.opcode in ("dynamic-slice", "slice"):
                return 2 * self.of(inst.shape)
            if inst.opcode in _IN_PLACE and len(operands) > _IN_PLACE[inst.opcode]:
                return 2 * self.of(operands[_IN_PLACE[inst.opcode]].shape)
            return self.result(inst) + sum(self.of(o.shape) for o in operands)
        read = 0.0
        for i, operand in enumerate(operands):
            param = fused.parameter(i)
            full = self.of(operand.shape)
            read += full if param is None else self.read(fused, param.name, full)
        return read + self.written(fused, fused.root)

    def total(self, graph: CallGraph) -> float:
        """Bytes read from and written to HBM per execution, per device."""
        return sum(b for b, _ in self.breakdown(graph).values())

    def breakdown(self, graph: CallGraph) -> dict[tuple[str, str, str], tuple[float, int]]:
        """(bytes per execution, instructions) by (opcode, the jax op it came from, result shape without layouts):
        where the bytes go (a copy of the whole KV cache, an attention score matrix written out)."""
        out: dict[tuple[str, str, str], tuple[float, int]] = {}
        for name in graph.control:
            comp = self.module[name]
            times = graph.multipliers.get(name, 0.0)
            for inst in comp.instructions:
                if inst.opcode not in _FREE and not inst.opcode.endswith("-done"):
                    key = (inst.opcode, _op_name(inst), _LAYOUT.sub("", inst.shape)[:120])
                    b, n = out.get(key, (0.0, 0))
                    out[key] = (b + times * self.instruction(comp, inst), n + 1)
        return out


def _forwards(comp: Computation, name: str) -> bool:
    """Whether `name` reaches the computation's root through bitcasts alone (a fusion that returns its operand
    re-viewed, as the TPU compiler nests one around a matmul's weight): the bytes read are decided where its result
    is used."""
    root = comp.root.name
    while name != root:
        users = list(comp.users(name))
        if len(users) != 1 or users[0].opcode != "bitcast":
            return False
        name = users[0].name
    return True


def _op_name(inst: Instruction) -> str:
    """The jax op an instruction came from (its metadata's op_name without the jit/loop path), or ""."""
    m = _OP_NAME.search(inst.attrs)
    return m.group(1).rsplit("/", 1)[-1] if m else ""


# ------------------------------------------------------------------------------------------------------ together
@dataclass
class Analysis:
    collectives: list[Collective]
    hbm_bytes: float  # without the attention scores a flash kernel keeps on chip (`attention_len`)
    hbm_bytes_all: float  # with them
    unknown_loops: int
    hbm_breakdown: dict[tuple[str, str, str], tuple[float, int]] = field(default_factory=dict)  # as hbm_bytes_all

    @property
    def ring_bytes(self) -> float:
        return sum(c.ring_bytes for c in self.collectives)

    def ring_bytes_across(self, devices_per_host: int) -> float:
        """The ring bytes of collectives whose groups are larger than a host, so that their rings cross hosts (a
        group no larger may cross too, if the mesh lays it out so: not counted here)."""
        return sum(c.ring_bytes for c in self.collectives if c.group > devices_per_host)

    def summary(self) -> dict[str, dict[str, float]]:
        return summarize(self.collectives)

    def largest_hbm(self, k: int = 8) -> list[dict]:
        """The k groups of instructions (`HbmBytes.breakdown`) that move the most HBM bytes per step."""
        top = sorted(self.hbm_breakdown.items(), key=lambda kv: kv[1][0], reverse=True)[:k]
        return [{"opcode": op, "op": name, "shape": shape, "instructions": n, "bytes_per_step": b}
                for (op, name, shape), (b, n) in top]

    def largest(self, k: int = 8) -> list[dict]:
        """The k collectives that send the most per step, for the report."""
        top = sorted(self.collectives, key=lambda c: c.ring_bytes, reverse=True)[:k]
        return [{"kind": c.kind, "arrays": c.arrays, "group": c.group, "bytes": c.nbytes, "per_step": c.count,
                 "ring_bytes_per_step": c.ring_bytes} for c in top]


def analyze(text: str, num_devices: int, unknown_trips: int = 1, attention_len: int = 0) -> Analysis:
    """Collectives and HBM bytes per execution of one compiled module's text (`compiled.as_text()`), a while loop
    whose trip count cannot be read taken to run `unknown_trips` times; `attention_len` as `HbmBytes`."""
    module = parse_module(text)
    graph = call_graph(module, unknown_trips)
    breakdown = HbmBytes(module).breakdown(graph)
    everything = sum(b for b, _ in breakdown.values())
    kept = HbmBytes(module, attention_len).total(graph) if attention_len else everything
    return Analysis(collectives(module, graph, num_devices), kept, everything, graph.unknown_loops, breakdown)
