"""jax's Mosaic GPU interpret mode for the tests: Mosaic GPU kernels run on the CPU as a simulated Hopper GPU (TMA
copies, barriers, wgmma, warpgroups as threads). jax 0.12.1 runs our warp-specialized kernels in it; 0.12.0 cannot
lower them ("Cannot lower jaxpr with effects"), so the tests that need it are marked and the test constraints pin
0.12.1. jax has no public name for it yet: `jax._src.pallas.mosaic_gpu.interpret`, whose docstring gives this use.

With `detect_races=True` its race detector checks every SMEM access against a happens-before order that models
PTX's proxies: a slot a compute warpgroup read with `plgpu.load` (the generic proxy) and TMA then overwrites (the
async proxy) is ordered only through a proxy fence. Our kernels had none there (a race on the segment-id, lse and
delta slots, reported until `mosaic_gpu.ring_producer` fenced each refill); jax's own attention backward
(`jax.experimental.pallas.ops.gpu.attention_mgpu`) is reported at the same pattern. wgmma's reads are not checked
(jaxpr_interpret.py says so), so K and V slots are checked only through the other accesses."""

from __future__ import annotations

import contextlib

import jax
import pytest

NEEDS_INTERPRETER = pytest.mark.skipif(
    tuple(int(x) for x in jax.__version__.split(".")[:3]) < (0, 12, 1),
    reason=f"jax {jax.__version__}'s Mosaic GPU interpreter cannot lower warp-specialized kernels (0.12.1 can; the "
           "test constraints pin it)")


@contextlib.contextmanager
def mosaic_gpu_interpreter(detect_races: bool = False):
    """Every Mosaic GPU kernel called inside runs in the interpreter (with `detect_races`, a race raises
    RuntimeError("RACE DETECTED ...") naming both accesses); its state is reset after a failing kernel, as jax
    asks."""
    from jax._src.pallas.mosaic_gpu.interpret import params as gpu_interpret
    try:
        with gpu_interpret.force_gpu_interpret_mode(gpu_interpret.InterpretGPUParams(detect_races=detect_races)):
            yield
    except Exception:
        from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call
        interpret_pallas_call.reset_gpu_interpret_mode_state()
        raise
