"""Device mesh, logical-axis rules and sharding helpers.

Parameters and activations carry *logical* axis names ('embed', 'mlp', 'batch', ...). One rules table maps them to
the mesh axes ('data', 'fsdp', 'tensor'); the model's math never names a mesh axis. Meshes use `AxisType.Auto`
(jax >= 0.10 defaults to Explicit, which `with_sharding_constraint` rejects).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
_log = logging.getLogger(__name__)
_warned: set[tuple] = set()
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (or tuple of mesh axes, or None for replicated). Order matters only for readability.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("norm", None),
    # activations
    ("batch", BATCH_AXES),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_time", None),
)

_RULES: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar("bolt_rules",
                                                                                     default=DEFAULT_RULES)


@contextlib.contextmanager
def logical_rules(rules: Iterable[tuple[str, Any]] | Mapping[str, Any]):
    """Temporarily replace the rules table (for example to turn off tensor parallelism of the vocab)."""
    token = _RULES.set(normalize_rules(rules))
    try:
        yield
    finally:
        _RULES.reset(token)


def current_rules() -> tuple[tuple[str, Any], ...]:
    return _RULES.get()


@contextlib.contextmanager
def use_mesh(mesh, rules: Iterable[tuple[str, Any]] | Mapping[str, Any] | None = None):
    """The mesh set (`jax.set_mesh`) and the logical-axis rules in force (`rules`, else the current ones): what every
    program compiled for a mesh runs under."""
    with jax.set_mesh(mesh), logical_rules(rules if rules is not None else current_rules()):
        yield


def normalize_rules(rules: Iterable[tuple[str, Any]] | Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Defaults, with the given names overridden; unknown mesh axes fail early."""
    merged = dict(DEFAULT_RULES)
    if rules is not None:
        items = rules.items() if isinstance(rules, Mapping) else rules
        for name, axes in items:
            axes = parse_axes(axes)
            for ax in (axes if isinstance(axes, tuple) else (axes,)):
                if ax is not None and ax not in MESH_AXES:
                    raise ValueError(f"rule {name!r} -> {axes!r} names an unknown mesh axis; mesh axes: {MESH_AXES}")
            merged[name] = axes
    return tuple(merged.items())


def parse_axes(axes: Any) -> Any:
    """A rule's target: None, a mesh axis, a tuple of them, or a string "data,fsdp" ("" = replicated), the form
    a command line gives (`--config.rules.vocab=`)."""
    if isinstance(axes, str):
        parts = tuple(a.strip() for a in axes.split(",") if a.strip() and a.strip().lower() != "none")
        return None if not parts else parts[0] if len(parts) == 1 else parts
    if isinstance(axes, list):
        return tuple(axes)
    return axes


def rules_as_strings(rules=DEFAULT_RULES) -> dict[str, str]:
    """The rules table in the string form config files and the command line use."""
    out = {}
    for name, axes in rules:
        out[name] = "" if axes is None else ",".join(axes) if isinstance(axes, tuple) else axes
    return out


def logical_to_spec(logical_axes: Sequence[str | None], rules=None, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> P:
    """PartitionSpec for logical axes. A mesh axis is used at most once; with `mesh` and `shape`, a dimension that the
    mesh axes do not divide is left replicated rather than failing at placement time."""
    table = dict(normalize_rules(rules) if rules is not None else current_rules())
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table[name]
        axes = tuple(a for a in (target if isinstance(target, tuple) else (target,)) if a is not None and a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.shape)
        if mesh is not None and shape is not None and axes:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[i] % size:
                axes = ()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


# ------------------------------------------------------------------------------------------------------ mesh
def resolve_mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Mesh sizes in MESH_AXES order; one of them may be -1 (fill with what is left)."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
    shape = [int(sizes.get(a, 1)) for a in MESH_AXES]
    fill = [i for i, s in enumerate(shape) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, shape))}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
    known = math.prod(s for s in shape if s != -1)
    if fill:
        if num_devices % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))}: the fixed axes ({known} devices) do not divide "
                             f"the {num_devices} available devices")
        shape[fill[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices but "
                         f"{num_devices} are available; make the product equal the device count or set one axis to -1")
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    devices = list(devices) if devices is not None else jax.devices()
    shape = resolve_mesh_shape(sizes or {"fsdp": -1}, len(devices))
    if devices == jax.devices():
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_summary(mesh: Mesh) -> str:
    return (" x ".join(f"{a}={mesh.shape[a]}" for a in MESH_AXES)
            + f" ({mesh.devices.size} {mesh.devices.flat[0].platform} devices)")


# ------------------------------------------------------------------------------------------------------ params
def _is_variable(x) -> bool:
    from flax import nnx
    return isinstance(x, nnx.Variable)


def variable_axes(var) -> tuple[str | None, ...]:
    axes = var.get_metadata().get("axes")
    if axes is None:
        return (None,) * len(var.shape)
    return tuple(axes)


def _param_spec(var, mesh: Mesh, rules) -> P:
    """The variable's PartitionSpec; warns (once per shape) when the rules ask to split a dimension the mesh axes do
    not divide, since that dimension then sits whole on every device: vocab 32004 on tensor=8 would replicate the
    embedding and the LM head on all eight."""
    axes = variable_axes(var)
    spec = logical_to_spec(axes, rules, mesh=mesh, shape=var.shape)
    wanted = logical_to_spec(axes, rules, mesh=mesh)
    for dim, (got, want) in enumerate(zip(spec, wanted)):
        key = (axes[dim], var.shape[dim], want)
        if got is None and want is not None and key not in _warned:
            _warned.add(key)
            names = want if isinstance(want, tuple) else (want,)
            size = math.prod(mesh.shape[a] for a in names)
            _log.warning("logical axis %r of size %d is not divisible by mesh axes %s (%d devices): it is REPLICATED "
                         "on every device; make the size a multiple of %d (e.g. pad vocab_size) or change the mesh",
                         axes[dim], var.shape[dim], "x".join(names), size, size)
    return spec


def state_shardings(abstract_state, mesh: Mesh, rules=None):
    """The NamedSharding of every variable in an (abstract) NNX state, from its `axes` metadata and the rules."""
    def one(var):
        return var.replace(NamedSharding(mesh, _param_spec(var, mesh, rules)))
    return jax.tree.map(one, abstract_state, is_leaf=_is_variable)


def replicated_fraction(abstract_state, mesh: Mesh, rules=None) -> float:
    """The share of parameter bytes every device holds in full copies beyond its 1/N part: 0 when every
    parameter is split over all devices, up to 1 - 1/N when everything is replicated. `check_sharding` reads it."""
    from flax import nnx
    n = mesh.devices.size
    total = per_device = 0
    for _, var in nnx.to_flat_state(abstract_state):
        spec = logical_to_spec(variable_axes(var), rules, mesh=mesh, shape=var.shape)
        split = math.prod(mesh.shape[a] for entry in spec if entry is not None
                          for a in (entry if isinstance(entry, tuple) else (entry,)))
        size = math.prod(var.shape) * np.dtype(var.dtype).itemsize
        total += size
        per_device += size / split
    return 0.0 if total == 0 or n == 1 else (per_device - total / n) / total


def check_sharding(abstract_state, mesh: Mesh, rules=None, max_replicated: float = 0.05) -> float:
    """Fails when more than `max_replicated` of the parameter bytes are held whole beyond each device's share
    (a rule that names no axis, or a dimension the mesh does not divide). Returns the fraction."""
    frac = replicated_fraction(abstract_state, mesh, rules)
    if frac > max_replicated:
        specs = state_specs(abstract_state, mesh, rules)
        whole = [k for k, v in specs.items() if all(e is None for e in v)]
        raise ValueError(f"{frac:.1%} of the parameter bytes are replicated beyond each device's share on mesh "
                         f"{mesh_summary(mesh)} (limit {max_replicated:.0%}); unsharded: {whole[:8]}")
    return frac


def state_specs(abstract_state, mesh: Mesh, rules=None) -> dict[str, P]:
    """Flat {'path/to/param': PartitionSpec}: what the rules table says for each parameter (for logs and tests)."""
    from flax import nnx
    out = {}
    for path, var in nnx.to_flat_state(abstract_state):
        out["/".join(str(p) for p in path)] = logical_to_spec(variable_axes(var), rules, mesh=mesh, shape=var.shape)
    return out


def create_sharded(factory, mesh: Mesh, rules=None):
    """Builds an NNX module directly in its sharding: each device materialises only its own shards.

    `factory()` must build the module from scratch (random init). It is traced once abstractly for shapes and
    metadata, then jitted with out_shardings, so the whole model never sits on one device.
    """
    from flax import nnx
    abstract = nnx.eval_shape(factory)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init():
        return nnx.state(factory())

    with use_mesh(mesh, rules):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------------------------------ activations
def constrain(x, logical_axes: Sequence[str | None]):
    """with_sharding_constraint by logical names; a no-op outside a mesh context (single device, tests)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, mesh=mesh, shape=x.shape)
    return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, the rest replicated."""
    spec = logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh=mesh)
    return NamedSharding(mesh, spec)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy arrays (this process's rows) -> global arrays sharded over the batch axes.

    Single process: the local rows are the global batch. Multi-process: each process passes its own rows and the
    global batch is their concatenation in process order.
    """
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
    return out


def batch_divisor(mesh: Mesh) -> int:
    """Global batch sizes must be multiples of this (the devices the batch is split over)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)
