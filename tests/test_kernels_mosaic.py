"""The Mosaic GPU (Hopper) attention forward on CPU: its pure-JAX twin against the reference (values, the
log-sum-exp the backward relies on, and gradients through the dispatch), the range table against brute force, and
the kernels themselves lowered to Mosaic GPU for the cuda platform (tracing, layouts, barriers and TMA shapes) and
run in jax's Mosaic GPU interpreter against the twins (jax >= 0.12.1); compiling them to cubins and timing them need
a Hopper GPU (bench/attention.py --check on the accelerator)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bolt_jax import kernels
from bolt_jax.kernels.mosaic_gpu import MosaicBlocks, kv_block_ranges, mosaic_forward, pure_jax_twin
from bolt_jax.kernels.pallas_gpu import Blocks, mosaic_gpu_attention, occurrence_range
from bolt_jax.kernels.xla import xla_attention
from tests.mosaic_interpreter import NEEDS_INTERPRETER, mosaic_gpu_interpreter
from tests.test_kernels import _check, inputs

SMALL = Blocks(fwd_q=32, fwd_k=16, bwd_q=16, bwd_k=32, mosaic=MosaicBlocks(block_q=64, block_kv=64))


def _reference_lse(q, k, seg, causal, scale):
    b, s, h, d = q.shape
    group = h // k.shape[2]
    logits = jnp.einsum("bshd,bthd->bhst", q.astype(jnp.float32),
                        jnp.repeat(k, group, axis=2).astype(jnp.float32)) * scale
    valid = seg[:, None, :, None] == seg[:, None, None, :]
    if causal:
        valid = valid & (jnp.arange(s)[:, None] >= jnp.arange(s)[None, :])
    return jax.nn.logsumexp(jnp.where(valid, logits, -jnp.inf), axis=-1)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("segments", [True, False])
@pytest.mark.parametrize("compute_wgs", [2, 1])
def test_twin_matches_reference_with_lse(causal, segments, compute_wgs):
    """The algorithm, with attention's two compute warpgroups per tile and with decode's one (64-row tiles)."""
    q, k, v, seg = inputs(s=256, h=8, k=2, d=64, cuts=(37, 150, 151))
    if not segments:
        seg = jnp.ones_like(seg)
    blocks = MosaicBlocks(block_q=64, block_kv=64, compute_wgs=compute_wgs)
    lo, hi = occurrence_range(seg)
    ranges = kv_block_ranges(lo, hi, tile_q=blocks.tile_q, block_kv=blocks.block_kv, n_kv_blocks=4, causal=causal)
    out, lse = pure_jax_twin(q, k, v, seg, seg, ranges, scale=0.125, causal=causal, segments=segments, blocks=blocks)
    want = xla_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg, causal=causal, sm_scale=0.125)
    np.testing.assert_allclose(out, want, atol=3e-6)
    np.testing.assert_allclose(lse, _reference_lse(q, k, seg, causal, 0.125), atol=3e-5)


def test_range_table_covers_every_visible_key_and_skips_other_documents():
    seg = jnp.asarray(np.repeat(np.arange(1, 9), 64)[None], jnp.int32)  # 8 documents of 64 tokens, S = 512
    lo, hi = occurrence_range(seg)
    ranges = np.asarray(kv_block_ranges(lo, hi, tile_q=128, block_kv=64, n_kv_blocks=8, causal=True))[0]
    doc = np.asarray(seg)[0]  # numpy: the loop below indexes it ~260k times
    for tile, (first, last) in enumerate(ranges):
        rows = np.arange(tile * 128, tile * 128 + 128)
        visible = [c for r in rows for c in range(512) if doc[c] == doc[r] and c <= r]
        assert first * 64 <= min(visible) and max(visible) < last * 64  # nothing visible is skipped
        assert last - first == 2  # and only the tile's own two documents are visited (of up to 8 causal blocks)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mosaic_backward", [True, False])
def test_dispatch_values_and_gradients(causal, mosaic_backward):
    """impl='mosaic_gpu' end to end on CPU: the twin forward, then the twin of the Mosaic backward (GQA summed in
    the kernel) or the Pallas backward on the forward's lse; padding (S=100)."""
    q, k, v, seg = inputs(s=100, h=4, k=2, d=64, cuts=(30, 70))
    blocks = dataclasses.replace(SMALL, mosaic=dataclasses.replace(SMALL.mosaic, backward=mosaic_backward))
    fn = lambda *a, **kw: mosaic_gpu_attention(*a, blocks=blocks, **kw)  # noqa: E731
    _check(fn, q, k, v, seg, causal, 3e-6, 3e-5)
    _check(fn, q, k, v, None, causal, 3e-6, 3e-5)  # no segment ids: pad keys hidden all the same
    out = kernels.attention(q, k, v, segment_ids=seg, impl="mosaic_gpu", causal=causal)
    np.testing.assert_allclose(out, xla_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg,
                                                  causal=causal), atol=3e-6)


def test_kernel_rejects_bad_inputs():
    q, k, v, seg = inputs(s=128, d=32)
    ranges = jnp.zeros((2, 1, 2), jnp.int32)
    with pytest.raises(ValueError, match="head dim"):
        mosaic_forward(q, k, v, seg, seg, ranges, scale=1.0, causal=True, segments=True)
    q, k, v, seg = inputs(s=128, d=64)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        mosaic_forward(q, k, v, seg, seg, ranges, scale=1.0, causal=True, segments=True)
    with pytest.raises(ValueError, match="multiples of 64"):
        MosaicBlocks(block_q=32)
    for bad in (dict(compute_wgs=3), dict(compute_wgs=1, schedule_barrier=True)):
        with pytest.raises(ValueError, match="compute_wgs must be 1 or 2"):
            MosaicBlocks(**bad)
    assert MosaicBlocks(compute_wgs=1).tile_q == 64 and MosaicBlocks().tile_q == 128


def test_backward_twin_sums_a_group_of_eight_over_many_documents():
    """The dK/dV kernel walks all query heads of a KV head's group (8, TinyLlama's ratio) over the query blocks of
    several short documents; the twin of that walk against autodiff of the reference."""
    q, k, v, _ = inputs(s=256, h=8, k=1, d=64)
    seg = jnp.asarray(np.repeat(np.arange(1, 9), 32)[None].repeat(2, 0), jnp.int32)
    fn = lambda *a, **kw: mosaic_gpu_attention(*a, blocks=SMALL, **kw)  # noqa: E731
    _check(fn, q, k, v, seg, True, 3e-6, 3e-5)


def _abstract(b=2, s=512, h=8, kvh=2, d=64):
    """Shapes only: q, k (= v), segment ids, [B, H, S] rows (lse, delta) and a range table, for lowering."""
    return (jax.ShapeDtypeStruct((b, s, h, d), jnp.bfloat16), jax.ShapeDtypeStruct((b, s, kvh, d), jnp.bfloat16),
            jax.ShapeDtypeStruct((b, s), jnp.int32), jax.ShapeDtypeStruct((b, h, s), jnp.float32),
            jax.ShapeDtypeStruct((b, s // 128, 2), jnp.int32))


@pytest.mark.parametrize("causal,segments", [(True, True), (True, False), (False, False)])
def test_kernels_lower_to_mosaic_gpu(causal, segments):
    """The real kernels, traced and lowered for the cuda platform on this CPU machine: the forward, then the dQ and
    dK/dV kernels of the backward."""
    from bolt_jax.kernels.mosaic_gpu_bwd import mosaic_backward
    q, k, seg, rows, ranges = _abstract()
    kw = dict(scale=0.125, causal=causal, segments=segments)
    fwd = jax.export.export(jax.jit(lambda *a: mosaic_forward(*a, **kw)), platforms=["cuda"])(
        q, k, k, seg, seg, ranges)
    assert "mosaic_gpu" in fwd.mlir_module()
    assert [a.shape for a in fwd.out_avals] == [q.shape, rows.shape]  # out, and the lse the backward reads
    bwd = jax.export.export(jax.jit(lambda *a: mosaic_backward(*a, **kw)), platforms=["cuda"])(
        q, k, k, seg, seg, rows, rows, q, ranges, ranges)
    assert bwd.mlir_module().count("mosaic_gpu") >= 2  # the dQ and the dK/dV kernels
    assert [a.shape for a in bwd.out_avals] == [q.shape, k.shape, k.shape]


@NEEDS_INTERPRETER
# The non-causal case without documents runs in `make test-slow` (28 s on the 2-core machine; the model's attention is
# always causal); its twin is held to the reference in `make test` above.
@pytest.mark.parametrize("causal,segments", [(True, True), pytest.param(False, False, marks=pytest.mark.slow)])
def test_kernels_in_the_mosaic_gpu_interpreter_equal_their_twins(causal, segments):
    """The real kernels, not their twins: the forward, dQ and dK/dV kernels run by jax's Mosaic GPU interpreter on
    this CPU (TMA ring, barriers, wgmma, the three warpgroups), bf16 as on a GPU, against the pure-JAX twins, which the
    tests above hold to the reference. Same algorithm, same tiles: equal but for bf16 roundings that fp32 summation
    order flips (measured: at most 1.2e-4 on outputs of magnitude about 1, 10 of 131072 elements; lse within 5e-7),
    so within half a bf16 step of each array's largest element. GQA group 2, three documents, S = 256 (two query
    tiles)."""
    from bolt_jax.kernels import pallas_gpu as pg
    q, k, v, seg = inputs(s=256, h=4, k=2, d=64, cuts=(37, 150, 151))
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    if not segments:
        seg = jnp.ones_like(seg)
    do = jax.random.normal(jax.random.key(3), q.shape, jnp.bfloat16)
    spans = pg._spans(seg, seg, True)
    kw = dict(scale=0.125, causal=causal, blocks=MosaicBlocks(block_q=64, block_kv=64, bwd_block=64),
              segments=segments)
    twin_out, twin_lse = pg._mosaic_forward(q, k, v, seg, seg, spans, interpret=True, **kw)
    twin_grads = pg._mosaic_backward(q, k, v, seg, seg, spans, twin_out, twin_lse, do, interpret=True, **kw)
    with mosaic_gpu_interpreter():
        out, lse = pg._mosaic_forward(q, k, v, seg, seg, spans, interpret=False, **kw)
        grads = jax.block_until_ready(
            pg._mosaic_backward(q, k, v, seg, seg, spans, twin_out, twin_lse, do, interpret=False, **kw))
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    def close(got, want):
        np.testing.assert_allclose(f32(got), f32(want), rtol=0, atol=2 ** -9 * np.abs(f32(want)).max())

    close(out, twin_out)
    np.testing.assert_allclose(f32(lse), f32(twin_lse), atol=1e-5)
    for got, want in zip(grads, twin_grads):
        close(got, want)


@NEEDS_INTERPRETER
def test_kernels_have_no_race_by_the_interpreters_race_detector():
    """The forward, dQ and dK/dV kernels under the Mosaic GPU interpreter's race detector (SMEM accesses against a
    happens-before order that models PTX's generic and async proxies), causal with three documents: no race. Without
    the proxy fence before each TMA refill (`mosaic_gpu.ring_producer`) it reports one on the segment-id slots
    (checked by removing it)."""
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call

    from bolt_jax.kernels import pallas_gpu as pg
    q, k, v, seg = inputs(s=256, h=2, k=1, d=64, cuts=(37, 150, 151))
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    spans = pg._spans(seg, seg, True)
    kw = dict(scale=0.125, causal=True, blocks=MosaicBlocks(block_q=64, block_kv=64, bwd_block=64), segments=True)
    lse = jnp.zeros((q.shape[0], q.shape[2], q.shape[1]), jnp.float32)
    with mosaic_gpu_interpreter(detect_races=True):
        jax.block_until_ready(pg._mosaic_forward(q, k, v, seg, seg, spans, interpret=False, **kw))
        jax.block_until_ready(pg._mosaic_backward(q, k, v, seg, seg, spans, q, lse, q, interpret=False, **kw))
    assert not interpret_pallas_call.get_races().races_found


def test_cuda_versions_that_miscompile_causal_mosaic_are_refused(monkeypatch):
    from bolt_jax.kernels import pallas_gpu
    monkeypatch.setattr(pallas_gpu, "ptxas_miscompiles_causal", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    q, k, v, seg = inputs(s=128, d=64)
    with pytest.raises(ValueError, match="12.9.1 or newer"):
        mosaic_gpu_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg, causal=True)
