"""jax's Mosaic GPU interpret mode for the tests: Mosaic GPU kernels run on the CPU as a simulated Hopper GPU (TMA
copies, barriers, wgmma, warpgroups as threads). jax 0.12.1 runs our warp-specialized kernels in it; 0.12.0 cannot
lower them ("Cannot lower jaxpr with effects"), so the tests that need it are marked and the test constraints pin
0.12.1. jax has no public name for it yet: `jax._src.pallas.mosaic_gpu.interpret`, whose docstring gives this use.

Its race detector (`InterpretGPUParams(detect_races=True)`) is not used here. It passes our forward without segment
ids, and flags the forward's segment-id ring: a compute warpgroup reads a slot with `plgpu.load`, arrives on the
slot's "free" barrier, and the memory warpgroup waits on it and refills the slot by TMA. It flags jax's own attention
backward (`jax.experimental.pallas.ops.gpu.attention_mgpu`, fp16) at the same pattern (lse / delta slots), so this is
most likely the detector (its wgmma reads are not checked at all, jaxpr_interpret.py says); a GPU's
compute-sanitizer racecheck would settle it."""

from __future__ import annotations

import contextlib

import jax
import pytest

NEEDS_INTERPRETER = pytest.mark.skipif(
    tuple(int(x) for x in jax.__version__.split(".")[:3]) < (0, 12, 1),
    reason=f"jax {jax.__version__}'s Mosaic GPU interpreter cannot lower warp-specialized kernels (0.12.1 can; the "
           "test constraints pin it)")


@contextlib.contextmanager
def mosaic_gpu_interpreter():
    """Every Mosaic GPU kernel called inside runs in the interpreter; its state is reset after a failing kernel, as
    jax asks."""
    from jax._src.pallas.mosaic_gpu.interpret import params as gpu_interpret
    try:
        with gpu_interpret.force_gpu_interpret_mode(gpu_interpret.InterpretGPUParams()):
            yield
    except Exception:
        from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call
        interpret_pallas_call.reset_gpu_interpret_mode_state()
        raise
