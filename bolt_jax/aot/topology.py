"""The hardware an ahead-of-time dry run compiles for: a named TPU slice, N NVIDIA GPUs, or N simulated CPU devices
standing in for a GPU cluster, with the chip whose published figures (bolt_jax.runtime.chips) the roofline prediction
uses.

`config.aot_topology` takes the names libtpu takes (`v5e:2x2`, `v5e:16x16`, `v5p:2x2x1`, `v5p:4x4x8`; the separator
may also be `_` or `=`, a v5p name may end in `_twisted`) for slices of the generations in CHIPS up to 256 chips;
`h100:N` / `h200:N` (N GPUs in one host) or `h100:HxN` (H hosts of N); or `cpu:N`. For a TPU slice,
`jax.experimental.topologies` gives the slice's devices and the real TPU compiler compiles for them without a TPU
(libtpu must be installed: `pip install 'bolt_jax[tpu]'`, or the test extra on Linux x86_64). For GPUs, XLA's GPU
compiler does the same without a GPU (a compile-only client of the CUDA plugin, `pip install 'bolt_jax[gpu-aot]'`
or the test extra), told the device by a target description built from CHIPS (`gpu_target_config`): the program
is the one the GPUs would run, our Triton-lowered Pallas kernels compiled to cubins by the PTX compiler the plugin
links (no CUDA toolkit needed), the Mosaic GPU kernels lowered and placed (their cubins are built when they first
run), and cuDNN's attention as the custom call the GPUs would run where cuDNN's library is installed (jax reads its
version when it traces the call: `cudnn_available`); what it cannot do without the device is autotune (it takes its
default tilings). `cpu:N` compiles with the CPU compiler on N CPU
devices and predicts with the figures of `config.aot_chip` (h100, h200): the program, sharding and collectives are
the ones the GPUs would run, the memory is the CPU compiler's buffer assignment and attention is the XLA reference.

The chips' figures live in bolt_jax.runtime.chips. Nothing here imports bolt_jax beyond it, so config validation
(`bolt_jax.config.validate_mesh`) can use this module.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bolt_jax.runtime.chips import CHIPS, Chip

MAX_CHIPS = 256
# libtpu's own pattern for topology names (its error message quotes it)
_TPU_NAME = re.compile(r"^([a-zA-Z0-9_ ]+?)[=_:]([0-9]+(?:x[0-9]+)*)(_twisted|_untwisted)?$")
_CPU_NAME = re.compile(r"^cpu:([0-9]+)$")
_GPU_NAME = re.compile(r"^([a-zA-Z0-9]+)[=_:]([0-9]+)(?:x([0-9]+))?$")
TPU_GENERATIONS = ("v5e", "v5p")  # the TPU chips of CHIPS, named as libtpu names them
GPUS = tuple(name for name, chip in CHIPS.items() if chip.compute_capability)  # the GPUs of CHIPS
CUDA_PLUGINS = (("xla_cuda13", 13), ("xla_cuda12", 12))  # jax's CUDA plugins, the CUDA major each is built for


@dataclass(frozen=True)
class Target:
    """A named topology resolved: which compiler (`platform`), how many devices, and whose figures."""
    name: str
    platform: str  # "tpu", "gpu" or "cpu"
    num_devices: int
    chip: Chip
    hosts: int = 1  # GPUs: the hosts the devices are spread over (num_devices / hosts each)

    def describe(self) -> str:
        if self.platform == "tpu":
            what = f"{self.num_devices} {self.chip.device_kind} chips"
        elif self.platform == "gpu":
            what = f"{self.num_devices} {self.chip.device_kind} GPUs" + (
                f" ({self.hosts} hosts of {self.num_devices // self.hosts})" if self.hosts > 1 else "")
        else:
            what = f"{self.num_devices} CPU devices standing in for {self.num_devices} x {self.chip.name}"
        return f"{self.name}: {what}"


def parse_target(topology: str, chip: str = "") -> Target:
    """`config.aot_topology` and `config.aot_chip` -> Target; a ValueError in one line for a user's mistake."""
    name, chip = str(topology).strip(), str(chip or "").strip().lower()
    if chip and chip not in CHIPS:
        raise ValueError(f"config.aot_chip={chip!r} is not a known chip; choose one of {sorted(CHIPS)}")
    cpu = _CPU_NAME.match(name)
    if cpu:
        n = int(cpu.group(1))
        if not chip:
            raise ValueError(f"config.aot_topology={name} compiles on CPU devices standing in for accelerators: name "
                             f"the chip to predict with, e.g. --config.aot_chip=h100 (one of {sorted(CHIPS)})")
        return Target(name, "cpu", _check_count(name, n), CHIPS[chip])
    gpu = _GPU_NAME.match(name)
    if gpu and gpu.group(1).lower() in GPUS:
        kind = gpu.group(1).lower()
        if chip and chip != kind:
            raise ValueError(f"config.aot_chip={chip} contradicts config.aot_topology={name} ({kind} GPUs); leave "
                             f"aot_chip empty for a GPU topology")
        hosts, per_host = (int(gpu.group(2)), int(gpu.group(3))) if gpu.group(3) else (1, int(gpu.group(2)))
        if hosts < 1 or per_host < 1:
            raise ValueError(f"config.aot_topology={name} names no GPUs; write {kind}:N or {kind}:HOSTSxN")
        return Target(name, "gpu", _check_count(name, hosts * per_host), CHIPS[kind], hosts=hosts)
    tpu = _TPU_NAME.match(name)
    generation = tpu.group(1).lower() if tpu else ""
    if generation not in TPU_GENERATIONS:
        raise ValueError(f"config.aot_topology={name!r} is not a known topology; write <generation>:<chips per "
                         f"axis> with generation {' or '.join(TPU_GENERATIONS)} (e.g. v5e:2x2, v5p:4x4x8), "
                         f"{' or '.join(GPUS)}:N GPUs (h100:8, h100:4x8 for 4 hosts of 8), or cpu:N")
    if chip and chip != generation:
        raise ValueError(f"config.aot_chip={chip} contradicts config.aot_topology={name} (a {generation} slice); "
                         f"leave aot_chip empty for a TPU topology")
    n = 1
    for size in tpu.group(2).split("x"):
        n *= int(size)
    return Target(name, "tpu", _check_count(name, n), CHIPS[generation])


def _check_count(name: str, n: int) -> int:
    if not 1 <= n <= MAX_CHIPS:
        raise ValueError(f"config.aot_topology={name} has {n} chips; ahead-of-time compiles go up to {MAX_CHIPS}")
    return n


def target_of(config: Any) -> Target | None:
    """The config's target, None when `aot_topology` is unset (or the config has no such key)."""
    topology = config.get("aot_topology", "")
    return parse_target(topology, config.get("aot_chip", "")) if topology else None


def validate(config: Any) -> Target | None:
    """The AOT settings before anything compiles: a known topology and chip, a dry run, and the devices available
    (libtpu installed and accepting the name; enough CPU devices for cpu:N). The mesh is checked against the
    target's device count by `bolt_jax.config.validate_mesh`."""
    target = target_of(config)
    if target is None:
        if config.get("aot_chip", ""):
            raise ValueError("config.aot_chip is set without config.aot_topology; name the topology to compile for")
        return None
    if not config.get("dry_run", False):
        raise ValueError(f"config.aot_topology={target.name} compiles ahead of time only: add --config.dry_run=True")
    _check_attention(config, target)
    devices(target)
    return target


def _check_attention(config: Any, target: Target) -> None:
    """On a TPU, attention `auto` is the splash kernel (pallas_tpu), which takes sequences of whole 128-blocks. For
    GPUs, cuDNN's attention needs cuDNN's library (not a device: it compiles without one, the memory equal to the
    H100's, bench/gpu_aot_memory.py); without the library `auto` falls back to our kernels, saying so, as it does
    where cuDNN refuses a shape, and `cudnn` is refused here."""
    impl = config.model.get("attention_impl", "auto") if "model" in config else ""
    seq = config.data.get("seq_len", 0) if "data" in config else 0
    if target.platform == "gpu" and impl == "cudnn" and not cudnn_available():
        raise ValueError(f"config.model.attention_impl=cudnn on {target.name} needs cuDNN's library, which jax does "
                         f"not find: pip install nvidia-cudnn-cu13 (or jax[cuda13]), or use auto, mosaic_gpu or "
                         f"pallas_gpu")
    if target.platform == "gpu" and impl == "cudnn" and not cudnn_compiles(target.chip):
        raise ValueError(f"config.model.attention_impl=cudnn on {target.name}: jax {_jax_version()} cannot compile "
                         f"cuDNN's attention without the GPU (0.12.0 can); use auto, mosaic_gpu or pallas_gpu")
    if target.platform == "tpu" and impl in ("auto", "pallas_tpu") and seq % 128:
        raise ValueError(f"config.data.seq_len={seq}: the TPU attention kernel (pallas_tpu, what attention_impl="
                         f"{impl} runs on {target.name}) takes multiples of 128; change seq_len or set "
                         f"--config.model.attention_impl=xla")


# ------------------------------------------------------------------------------------------------------ devices
def _jax_version() -> str:
    import jax
    return jax.__version__


def _local_tpu() -> bool:
    """A TPU attached to this machine (what jax's own check reads): then libtpu's settings are left alone."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _forced_cpu_count() -> int:
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(m.group(1)) if m else 1


def prepare_process(target: Target) -> None:
    """For cpu:N, before jax starts its backends: `jax_num_cpu_devices=N` when XLA_FLAGS forces fewer host devices
    (too late once the backend started: `devices` then says to set XLA_FLAGS). The command line calls it first."""
    import jax
    if target.platform == "cpu" and max(_forced_cpu_count(), jax.config.jax_num_cpu_devices) < target.num_devices:
        try:
            jax.config.update("jax_num_cpu_devices", target.num_devices)
        except RuntimeError:
            pass  # the backend already runs; `devices` reports it


@contextlib.contextmanager
def _quiet_libtpu(target: Target) -> Iterator[None]:
    """While libtpu loads on a machine without a TPU: `TPU_WORKER_HOSTNAMES=localhost` and the slice's
    `TPU_ACCELERATOR_TYPE`, each only when unset, or libtpu logs an error about worker hostnames and a warning about
    the accelerator type (harmless: the compiled program is byte for byte the same with and without them). Removed
    again afterwards: `bolt_jax.runtime.distributed` takes TPU_WORKER_HOSTNAMES for a TPU pod, in this process and in
    the processes it starts. Also `ALLOW_MULTIPLE_LIBTPU_LOAD=1`: libtpu locks /tmp/libtpu_lockfile for one process
    at a time, which only guards a real TPU; without it a second compile beside a running one (two dry runs, a test
    beside a dry run) fails with "Internal error when accessing libtpu multi-process lockfile"."""
    added = {} if _local_tpu() else {k: v for k, v in (("TPU_WORKER_HOSTNAMES", "localhost"),
                                                       ("TPU_ACCELERATOR_TYPE", _accelerator_type(target)),
                                                       ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"))
                                     if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _accelerator_type(target: Target) -> str:
    """The Cloud TPU accelerator type of a slice: v5litepod-<chips>, v5p-<TensorCores> (two per chip)."""
    return f"v5litepod-{target.num_devices}" if target.chip.name == "v5e" else f"v5p-{2 * target.num_devices}"


@functools.cache
def _tpu_devices(target: Target) -> tuple:
    name = target.name
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"config.aot_topology={name} needs the TPU compiler, libtpu, which is not installed: "
                         f"pip install 'bolt_jax[tpu]' (or the test extra, on Linux x86_64)")
    from jax.experimental import topologies
    try:
        with _quiet_libtpu(target):
            return tuple(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # noqa: BLE001 - libtpu's refusals arrive as JaxRuntimeError
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"config.aot_topology={name}: libtpu refuses it: {text}") from None


def cudnn_available() -> bool:
    """Whether jax finds cuDNN's library (the version it checks when it traces cuDNN's attention), here through the
    CUDA plugin: `nvidia-cudnn-cu13` installed (jax[cuda13] brings it; jax[cuda13-local] does not; the test extra
    has it through torch's CUDA wheels)."""
    try:
        from jax._src.lib import cuda_versions
        return bool(cuda_versions is not None and cuda_versions.cudnn_get_version())
    except Exception:  # noqa: BLE001 - no plugin, or no library to load
        return False


@functools.cache
def cudnn_compiles(chip: Chip) -> bool:
    """Whether cuDNN's attention compiles here for one `chip` GPU without the GPU: its library installed
    (`cudnn_available`) and this jax's XLA able to emit the custom call deviceless. jax 0.12.0's emits it unplanned;
    0.12.1's builds cuDNN's execution plan while compiling, which without a GPU needs XLA's deviceless cuDNN mode (off
    by default: "StreamExecutor is null") and, with that mode on and a `dnn_version` in the target description, still
    fails here: cuDNN's attention engines are compiled at run time and ask for the CUDA driver library (libcuda),
    which a machine without a GPU driver lacks ("RUNTIME_PREREQUISITE_MISSING ... libcuda == nullptr"). Probed once,
    a causal forward and backward of 2 x 128 tokens (about a second); where it does not compile, the reason goes to
    `kernels.cudnn.DEVICELESS_REFUSAL`, so `auto` compiles another attention."""
    import jax
    import jax.numpy as jnp

    from bolt_jax.kernels import cudnn
    ok = cudnn_available()
    refusal = None if ok else "cuDNN's library is not installed (nvidia-cudnn-cu13)"
    if ok:
        mesh = jax.sharding.Mesh(_gpu_devices(parse_target(f"{chip.name}:1"))[:1], ("x",))
        x = jax.ShapeDtypeStruct((2, 128, 2, 64), jnp.bfloat16,
                                 sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        loss = lambda q, k, v: cudnn.cudnn_attention(q, k, v).astype(jnp.float32).sum()  # noqa: E731
        try:
            with jax.set_mesh(mesh):
                jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
        except Exception:  # noqa: BLE001 - XLA's refusal arrives as JaxRuntimeError
            ok, refusal = False, (f"jax {jax.__version__} cannot compile cuDNN's attention without a GPU (it plans "
                                  f"cuDNN's kernels while compiling, which needs the CUDA driver)")
    cudnn.DEVICELESS_REFUSAL = refusal
    return ok


def cuda_plugin() -> tuple[str, int] | None:
    """(module, CUDA major) of the installed jax CUDA plugin, the newest CUDA first; None without one."""
    for module, major in CUDA_PLUGINS:
        if importlib.util.find_spec(f"jax_plugins.{module}") is not None:
            return module, major
    return None


def gpu_target_config(chip: Chip, cuda_major: int) -> str:
    """What XLA's GPU compiler knows of a device when it compiles without one (a GpuTargetConfigProto in text form):
    the chip's figures from CHIPS and the CUDA of the plugin. The per-block limits are those of every GPU since
    Volta; shared memory per SM and per block (opt-in) are Hopper's (228 KiB, 227 KiB), the only compute capability
    CHIPS has. cuDNN 9.x (`dnn_version_info`) only gates which cuDNN fusions XLA may emit."""
    major, minor = chip.compute_capability.split(".")
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: {chip.sms}
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bytes_per_s)}
  l2_cache_size: {chip.l2_bytes}
  clock_rate_ghz: {chip.clock_ghz}
  device_memory_size: {chip.device_memory_bytes}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: {cuda_major} minor: 0 }}
device_description_str: "{chip.device_kind}"
"""


@functools.cache
def _gpu_devices(target: Target) -> tuple:
    plugin = cuda_plugin()
    if plugin is None:
        raise ValueError(f"config.aot_topology={target.name} needs XLA's GPU compiler, jax's CUDA plugin, which is not "
                         f"installed: pip install 'bolt_jax[gpu-aot]' (or the test extra), or compile for cpu:"
                         f"{target.num_devices} with --config.aot_chip={target.chip.name}")
    from jax.experimental import topologies
    per_host = target.num_devices // target.hosts
    try:
        return tuple(topologies.get_topology_desc(platform="cuda", topology=f"1x{target.hosts}x{per_host}",
                                                  target_config=gpu_target_config(target.chip, plugin[1])).devices)
    except Exception as e:  # noqa: BLE001 - the plugin's refusals arrive as JaxRuntimeError
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"config.aot_topology={target.name}: the CUDA plugin refuses it: {text}") from None


def devices(target: Target) -> list:
    """The devices to build the mesh from: the TPU slice's or the GPUs' (no accelerator needed), or the first N CPU
    devices. For GPUs, whether cuDNN's attention compiles for them is probed first (`cudnn_compiles`)."""
    import jax
    if target.platform == "tpu":
        return list(_tpu_devices(target))
    if target.platform == "gpu":
        gpus = list(_gpu_devices(target))
        cudnn_compiles(target.chip)
        return gpus
    prepare_process(target)
    cpus = jax.devices("cpu")
    if len(cpus) < target.num_devices:
        raise ValueError(f"config.aot_topology={target.name} needs {target.num_devices} CPU devices but jax started "
                         f"with {len(cpus)}; set XLA_FLAGS=--xla_force_host_platform_device_count="
                         f"{target.num_devices} before starting")
    return cpus[:target.num_devices]
