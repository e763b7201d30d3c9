"""Decode attention (one query per row against a KV cache [B, T, K * D] with per-row lengths): the GPU and TPU Pallas
kernels in interpret mode against the XLA reference, the reference against a direct computation, and the sampler's
greedy tokens unchanged when it decodes with either kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bolt_jax import kernels
from bolt_jax.kernels.decode import (
    heads_of,
    merge_attention,
    pallas_decode_attention,
    xla_decode_attention,
    xla_decode_attention_lse,
)
from bolt_jax.kernels.decode_tpu import pallas_tpu_decode_attention
from bolt_jax.kernels.xla import xla_attention

KERNELS = {"pallas_gpu": lambda *a, **kw: pallas_decode_attention(*a, block=64, **kw),
           "pallas_tpu": lambda *a, **kw: pallas_tpu_decode_attention(*a, block_t=128, block_rows=2, **kw)}


def cache(b=3, t=256, h=8, k=2, d=32, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, 1, h, d)), dtype)
    kc = jnp.asarray(rng.normal(size=(b, t, k * d)), dtype)  # a position's KV heads side by side
    vc = jnp.asarray(rng.normal(size=(b, t, k * d)), dtype)
    seg = np.ones((b, t), np.int32)
    seg[0, :7] = 0  # left padding of a shorter prompt
    seg[2, :100] = 0
    lengths = jnp.asarray([200, 1, 130][:b], jnp.int32)  # the second row sees one key; the third crosses a block
    return q, kc, vc, jnp.asarray(seg), lengths


def test_reference_is_attention_over_the_visible_keys():
    q, kc, vc, seg, lengths = cache()
    got = xla_decode_attention(q, kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths)
    for r in range(q.shape[0]):
        keep = np.flatnonzero((np.asarray(seg[r]) != 0) & (np.arange(kc.shape[1]) < int(lengths[r])))
        k4, v4 = heads_of(kc[r:r + 1, keep], q.shape[-1]), heads_of(vc[r:r + 1, keep], q.shape[-1])
        want = xla_attention(q[r:r + 1], k4, v4, causal=False)
        np.testing.assert_allclose(got[r:r + 1], want, atol=2e-6)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("heads", [(8, 2), (4, 4), (32, 4), (9, 3)])
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
def test_pallas_kernel_matches_reference(kernel, heads, dtype, atol):
    q, kc, vc, seg, lengths = cache(h=heads[0], k=heads[1], dtype=dtype)
    kw = dict(kv_segment_ids_BxT=seg, lengths_B=lengths)
    got = KERNELS[kernel](q, kc, vc, **kw)
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               np.asarray(xla_decode_attention(q, kc, vc, **kw), np.float32), atol=atol)


@pytest.mark.parametrize("t,block_rows,lengths", [(384, 2, [384, 5, 1, 0]), (384, 4, [129, 3, 256, 0]),
                                                   (200, 2, [200, 77, 1, 199])])
def test_tpu_kernel_row_and_time_blocks(t, block_rows, lengths):
    """The TPU kernel's blocking: rows in blocks of `block_rows`, time in blocks of 128 (a row block fetches only up to
    its longest row's last block, each row computes only up to its own) or one block of the whole cache when its
    length is no multiple of 128; rows of length 0 give output 0."""
    q = _queries(b=4, nq=2, h=8)
    _, kc, vc, seg, _ = cache(b=4, t=t, seed=3)
    kw = dict(kv_segment_ids_BxT=jnp.ones_like(seg), lengths_B=jnp.asarray(lengths, jnp.int32))
    got, got_lse = pallas_tpu_decode_attention(q, kc, vc, block_t=128, block_rows=block_rows, return_lse=True, **kw)
    want, want_lse = xla_decode_attention_lse(q, kc, vc, **kw)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got_lse, want_lse, atol=2e-5)


def test_tpu_kernel_writes_its_lse_only_when_asked():
    """A sampler step asks for no log-sum-exp: the kernel then has one output (a [B, R, 1] fp32 block is written
    lane-padded to 128, 0.6% of a TinyLlama decode chunk's HBM bytes on a v5e), and the same attention output."""
    q = _queries(b=4, nq=2, h=8)
    _, kc, vc, seg, lengths = cache(b=4, t=256, seed=3)
    kw = dict(kv_segment_ids_BxT=seg, lengths_B=jnp.asarray([256, 5, 1, 130], jnp.int32), block_t=128, block_rows=2)

    def pallas_outputs(**extra) -> int:
        jaxpr = jax.make_jaxpr(lambda *a: pallas_tpu_decode_attention(*a, **kw, **extra))(q, kc, vc)
        return sum(len(e.outvars) for e in jaxpr.eqns if e.primitive.name == "pallas_call")

    assert (pallas_outputs(), pallas_outputs(return_lse=True)) == (1, 2)
    alone, (with_lse, _) = (pallas_tpu_decode_attention(q, kc, vc, **kw, **x) for x in ({}, {"return_lse": True}))
    np.testing.assert_array_equal(alone, with_lse)


def _queries(b=3, nq=4, h=8, d=32, dtype=jnp.float32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, nq, h, d)), dtype)


def test_lse_reference_is_attention_and_log_sum_exp_over_the_visible_keys():
    """Q queries per row (the samples sharing a prompt): each query's output and log-sum-exp from a direct numpy
    computation over the row's visible keys."""
    q = _queries()
    _, kc, vc, seg, lengths = cache()
    out, lse = xla_decode_attention_lse(q, kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths)
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, heads_of(kc, q.shape[-1]), heads_of(vc, q.shape[-1])))
    for r in range(q.shape[0]):
        keep = np.flatnonzero((np.asarray(seg[r]) != 0) & (np.arange(kc.shape[1]) < int(lengths[r])))
        for i in range(q.shape[1]):
            for hh in range(q.shape[2]):
                scores = kn[r, keep, hh // 4] @ qn[r, i, hh] / np.sqrt(q.shape[3])
                want_lse = np.log(np.exp(scores - scores.max()).sum()) + scores.max()
                want = np.exp(scores - want_lse) @ vn[r, keep, hh // 4]
                np.testing.assert_allclose(lse[r, i, hh], want_lse, rtol=1e-5)
                np.testing.assert_allclose(out[r, i, hh], want, atol=2e-5)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("nq", [1, 3, 4])
def test_pallas_kernel_with_several_queries_and_lse_matches_reference(kernel, nq):
    q = _queries(nq=nq)
    _, kc, vc, seg, lengths = cache()
    kw = dict(kv_segment_ids_BxT=seg, lengths_B=lengths.at[0].set(0))  # a row without keys: output 0, lse NEG
    got, got_lse = KERNELS[kernel](q, kc, vc, return_lse=True, **kw)
    want, want_lse = xla_decode_attention_lse(q, kc, vc, **kw)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got_lse, want_lse, atol=2e-5)


def test_merged_halves_equal_attention_over_all_keys():
    """Prompt keys in one cache, a row's own keys in another: merging the two partial attentions by their
    log-sum-exps equals attention over the union (the oracle: one attention over the concatenated keys)."""
    q, kc, vc, seg, lengths = cache()
    split = 96
    kw_a = dict(kv_segment_ids_BxT=seg[:, :split], lengths_B=jnp.minimum(lengths, split))
    kw_b = dict(kv_segment_ids_BxT=seg[:, split:], lengths_B=jnp.maximum(lengths - split, 0))
    a, lse_a = xla_decode_attention_lse(q, kc[:, :split], vc[:, :split], **kw_a)
    b, lse_b = xla_decode_attention_lse(q, kc[:, split:], vc[:, split:], **kw_b)
    got = merge_attention(a, lse_a, b, lse_b)
    want = xla_decode_attention(q, kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths)
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_bad_inputs_are_refused():
    q, kc, vc, seg, lengths = cache(t=200)
    with pytest.raises(ValueError, match="multiple of the block"):
        pallas_decode_attention(q, kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths, block=64)
    with pytest.raises(ValueError, match="whole heads"):
        kernels.decode_attention(q, kc[..., :-1], vc[..., :-1], kv_segment_ids_BxT=seg, lengths_B=lengths)
    with pytest.raises(ValueError, match="unknown decode attention impl"):
        kernels.decode_attention(q, kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths, impl="flash")


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_sampler_decodes_the_same_tokens_with_the_kernel(monkeypatch, kernel):
    from flax import nnx

    from bolt_jax.model import Llama, preset
    from bolt_jax.sampling import generate
    model = Llama(preset("tiny", compute_dtype="float32"), nnx.Rngs(0))
    prompts = [[1, 5, 9, 33, 7], [1, 100, 200]]
    ref = generate(model, prompts, max_new_tokens=6, greedy=True)
    monkeypatch.setitem(kernels.DECODE_AUTO, "cpu", kernel)  # the kernel, in interpret mode
    jax.clear_caches()  # `auto` is resolved at trace time: retrace
    assert "bolt_decode_attention" in str(jax.make_jaxpr(
        lambda *a: kernels.decode_attention(*a[:3], kv_segment_ids_BxT=a[3], lengths_B=a[4]))(*cache()))
    try:
        got = generate(model, prompts, max_new_tokens=6, greedy=True)
    finally:
        monkeypatch.undo()
        jax.clear_caches()  # or later programs of the same shapes would reuse these kernel traces as `auto`
    assert got.tokens == ref.tokens
    np.testing.assert_allclose(got.logq, ref.logq, atol=1e-4)


@pytest.mark.parametrize("b,t,kd,want", [(64, 2048, 256, (8, 512)),  # TinyLlama: the asked blocks fit
                                         (64, 2048, 1024, (8, 128)),  # 8 KV heads of 128: shorter time blocks
                                         (64, 2048, 2048, (4, 128)),  # then fewer rows
                                         (3, 200, 64, (3, 200))])  # no multiple of 128: one block of the whole cache
def test_tpu_kernel_blocks_divide_the_cache_and_fit_vmem(b, t, kd, want):
    from bolt_jax.kernels.decode_tpu import KV_VMEM_BUDGET, _blocks
    bb, bt = _blocks(b, t, kd, 2, 8, 512)
    assert (bb, bt) == want and b % bb == 0 and t % bt == 0
    assert 4 * bb * bt * kd * 2 <= KV_VMEM_BUDGET


def test_a_kernel_on_another_accelerator_is_said_to_be_interpreted(monkeypatch, caplog):
    """decode_impl=pallas_tpu where the program is compiled for a GPU runs in the Pallas interpreter: one warning
    (and none on CPU, where the tests interpret the kernels on purpose)."""
    import logging
    q, kc, vc, seg, lengths = cache()
    kw = dict(kv_segment_ids_BxT=seg, lengths_B=lengths, impl="pallas_tpu")
    with caplog.at_level(logging.WARNING, logger="bolt_jax.kernels"):
        kernels.decode_attention(q, kc, vc, **kw)
        assert not caplog.records
        monkeypatch.setattr(kernels, "target_platform", lambda: "gpu")
        kernels.decode_attention(q, kc, vc, **kw)
        kernels.decode_attention(q, kc, vc, **kw)
    assert [r.getMessage() for r in caplog.records] == [
        "decode_impl=pallas_tpu on gpu runs in an interpreter (it is a tpu kernel): correct but very slow; "
        "use 'auto'"]
