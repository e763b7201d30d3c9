"""Attention kernels against the XLA reference (itself checked against jax.nn.dot_product_attention), values and
gradients, in Pallas interpret mode on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bolt_jax import kernels
from bolt_jax.kernels.pallas_gpu import Blocks, occurrence_range, pallas_gpu_attention
from bolt_jax.kernels.pallas_tpu import pallas_tpu_attention
from bolt_jax.kernels.xla import xla_attention


def inputs(b=2, s=128, h=4, k=2, d=32, dtype=jnp.float32, seed=0, cuts=(50,)):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, s, h, d)), dtype)
    kk = jnp.asarray(rng.normal(size=(b, s, k, d)), dtype)
    v = jnp.asarray(rng.normal(size=(b, s, k, d)), dtype)
    seg = np.ones((b, s), np.int32)
    for c in cuts:
        seg[:, c:] += 1
    return q, kk, v, jnp.asarray(seg)


def test_xla_reference_matches_jax_dot_product_attention():
    q, k, v, seg = inputs()
    mask = seg[:, None, :, None] == seg[:, None, None, :]
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="xla")
    np.testing.assert_allclose(xla_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg), ref, atol=2e-6)


def _check(fn, q, k, v, seg, causal, atol, gatol):
    kw = dict(q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg, causal=causal)
    np.testing.assert_allclose(np.asarray(fn(q, k, v, **kw), np.float32),
                               np.asarray(xla_attention(q, k, v, **kw), np.float32), atol=atol)
    loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v, **kw).astype(jnp.float32)))  # noqa: E731
    got = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(xla_attention), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=gatol)


# different tiles in the forward and the backward, so the padding and the causal block skipping of each are exercised
SMALL_BLOCKS = Blocks(fwd_q=32, fwd_k=16, bwd_q=16, bwd_k=32)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (8, 1)])
def test_pallas_gpu_values_and_gradients(causal, heads):
    q, k, v, seg = inputs(h=heads[0], k=heads[1], cuts=(40, 90))
    fn = lambda *a, **kw: pallas_gpu_attention(*a, blocks=SMALL_BLOCKS, **kw)  # noqa: E731
    _check(fn, q, k, v, seg, causal, 2e-6, 2e-5)


@pytest.mark.parametrize("head_dim,heads", [(64, (4, 1)), (128, (8, 2)), (64, (4, 4))])
def test_pallas_gpu_head_dims_and_group_sizes(head_dim, heads):
    q, k, v, seg = inputs(s=96, h=heads[0], k=heads[1], d=head_dim, cuts=(30,))
    fn = lambda *a, **kw: pallas_gpu_attention(*a, blocks=SMALL_BLOCKS, **kw)  # noqa: E731
    _check(fn, q, k, v, seg, True, 3e-6, 3e-5)


def test_occurrence_range_matches_brute_force():
    rng = np.random.default_rng(0)
    seg = np.concatenate([np.repeat([1, 2, 3, 0], [5, 9, 3, 7])[None],   # packed documents, padding at the end
                          rng.integers(0, 4, (3, 24))]).astype(np.int32)  # ids that come back (any layout)
    lo, hi = (np.asarray(x) for x in occurrence_range(jnp.asarray(seg)))
    for r in range(seg.shape[0]):
        for i in range(seg.shape[1]):
            where = np.flatnonzero(seg[r] == seg[r, i])
            assert (lo[r, i], hi[r, i]) == (where[0], where[-1] + 1)


@pytest.mark.parametrize("causal", [True, False])
def test_pallas_gpu_skips_other_documents_blocks_exactly(causal):
    """Many short documents (most blocks skipped) and ids that come back later in the row (a layout the packer never
    makes, where skipping by document start alone would be wrong)."""
    q, k, v, _ = inputs(s=128, h=4, k=2)
    many = np.repeat(np.arange(1, 9), 16)[None].repeat(2, 0)
    returning = np.tile(np.repeat([1, 2], 16), 4)[None].repeat(2, 0)
    fn = lambda *a, **kw: pallas_gpu_attention(*a, blocks=SMALL_BLOCKS, **kw)  # noqa: E731
    for seg in (many, returning):
        _check(fn, q, k, v, jnp.asarray(seg, jnp.int32), causal, 2e-6, 2e-5)


def test_pallas_gpu_pads_ragged_lengths_and_bf16():
    q, k, v, seg = inputs(s=100)
    fn = lambda *a, **kw: pallas_gpu_attention(*a, blocks=SMALL_BLOCKS, **kw)  # noqa: E731
    _check(fn, q, k, v, seg, True, 2e-6, 2e-5)
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    _check(fn, qb, kb, vb, seg, True, 2e-2, 1.5e-1)


def test_pallas_tpu_splash_values_and_gradients():
    q, k, v, seg = inputs(s=256, d=64, cuts=(100,))
    fn = lambda *a, **kw: pallas_tpu_attention(*a, block=128, **kw)  # noqa: E731
    _check(fn, q, k, v, seg, True, 2e-6, 2e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_tokamax_values_and_gradients(causal):
    """tokamax through its CPU (XLA) path: our wrapper's mask and GQA layout against the reference."""
    from bolt_jax.kernels.tokamax_attention import tokamax_attention

    q, k, v, seg = inputs(s=64, h=8, k=2, cuts=(20, 41))
    _check(tokamax_attention, q, k, v, seg, causal, 2e-5, 2e-4)


def test_dispatch():
    assert kernels.resolve_impl("auto", "cpu") == "xla"
    assert kernels.resolve_impl("auto", "tpu") == "pallas_tpu"
    assert kernels.resolve_impl("auto", "gpu") == "cudnn"
    assert kernels.resolve_impl("auto", "gpu", documents=True, arch="8.0") == "pallas_gpu"
    assert kernels.resolve_impl("auto", "gpu", documents=True, arch="9.0") == "mosaic_gpu"
    assert kernels.resolve_impl("auto", "gpu", documents=False, arch="9.0") == "cudnn"
    assert kernels.resolve_impl("auto", "cpu", documents=True) == "xla"
    with pytest.raises(ValueError, match="unknown attention impl"):
        kernels.resolve_impl("flash3")
    q, k, v, seg = inputs()
    out = kernels.attention(q, k, v, segment_ids=seg, impl="pallas_gpu")
    np.testing.assert_allclose(out, xla_attention(q, k, v, q_segment_ids_BxS=seg, kv_segment_ids_BxT=seg), atol=2e-6)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        kernels.attention(q[:, :, :3], k, v)


def test_model_with_the_pallas_kernel_equals_the_reference():
    from flax import nnx

    from bolt_jax.model import Llama, preset
    cfg = preset("tiny", compute_dtype="float32")
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 64)))
    seg = jnp.asarray(np.repeat([[1] * 20 + [2] * 44], 2, 0))
    ref = Llama(cfg, nnx.Rngs(0))(tokens, None, seg)
    out = Llama(cfg.replace(attention_impl="pallas_gpu"), nnx.Rngs(0))(tokens, None, seg)
    np.testing.assert_allclose(out, ref, atol=2e-5)
