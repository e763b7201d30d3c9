"""The platform a program is compiled for, which is not always the machine's: an ahead-of-time compile for a TPU slice
or for GPUs runs on a CPU host (bolt_jax.aot) and must pick, and emit, that platform's kernels. Read from the active
mesh's devices; the default backend's without a mesh. A leaf module: every kernel module asks it."""

from __future__ import annotations

import functools
import importlib.util

import jax


@functools.cache
def pallas_triton_available() -> bool:
    """Whether this jax still has Pallas' Triton backend (deprecated in jax 0.11; its example kernels left
    `jax.experimental.pallas.ops.gpu` in 0.12.1). Without it the `pallas_gpu` kernels cannot lower and `auto` picks
    others (kernels.resolve_impl, kernels.decode_attention)."""
    return importlib.util.find_spec("jax._src.pallas.triton") is not None


def target_platform() -> str:
    """"tpu", "gpu", "cpu": the active mesh's devices' platform, else the default backend's."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def gpu_arch() -> str | None:
    """The compute capability ("9.0" on an H100 / H200) of the GPUs a program is compiled for: the active mesh's
    (an ahead-of-time compile for GPUs runs on a CPU host: bolt_jax.aot), else the first device's; None off NVIDIA
    GPUs."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    local = jax.devices()[0]
    if device is not None and device.device_kind != local.device_kind:
        from bolt_jax.runtime.chips import CHIPS
        return next((c.compute_capability for c in CHIPS.values()
                     if c.compute_capability and c.device_kind == device.device_kind), None)
    return getattr(local, "compute_capability", None)
