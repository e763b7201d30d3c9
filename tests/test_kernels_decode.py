"""Decode attention (one query per row against a KV cache with per-row lengths): the Pallas kernel in interpret mode
against the XLA reference, and the sampler's greedy tokens unchanged when it decodes with the kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bolt_jax import kernels
from bolt_jax.kernels.decode import pallas_decode_attention, xla_decode_attention
from bolt_jax.kernels.xla import xla_attention


def cache(b=3, t=256, h=8, k=2, d=32, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, 1, h, d)), dtype)
    kc = jnp.asarray(rng.normal(size=(b, t, k, d)), dtype)
    vc = jnp.asarray(rng.normal(size=(b, t, k, d)), dtype)
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
        want = xla_attention(q[r:r + 1], kc[r:r + 1, keep], vc[r:r + 1, keep], causal=False)
        np.testing.assert_allclose(got[r:r + 1], want, atol=2e-6)


@pytest.mark.parametrize("heads", [(8, 2), (4, 4), (32, 4)])
@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-6), (jnp.bfloat16, 2e-2)])
def test_pallas_kernel_matches_reference(heads, dtype, atol):
    q, kc, vc, seg, lengths = cache(h=heads[0], k=heads[1], dtype=dtype)
    kw = dict(kv_segment_ids_BxT=seg, lengths_B=lengths)
    got = pallas_decode_attention(q, kc, vc, block=64, **kw)
    np.testing.assert_allclose(np.asarray(got, np.float32),
                               np.asarray(xla_decode_attention(q, kc, vc, **kw), np.float32), atol=atol)


def test_bad_inputs_are_refused():
    q, kc, vc, seg, lengths = cache(t=200)
    with pytest.raises(ValueError, match="multiple of the block"):
        pallas_decode_attention(q, kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths, block=64)
    with pytest.raises(ValueError, match="one query per row"):
        pallas_decode_attention(jnp.concatenate([q, q], 1), kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths)
    with pytest.raises(ValueError, match="unknown decode attention impl"):
        kernels.decode_attention(q, kc, vc, kv_segment_ids_BxT=seg, lengths_B=lengths, impl="flash")


def test_sampler_decodes_the_same_tokens_with_the_kernel(monkeypatch):
    from flax import nnx

    from bolt_jax.model import Llama, preset
    from bolt_jax.sampling import generate
    model = Llama(preset("tiny", compute_dtype="float32"), nnx.Rngs(0))
    prompts = [[1, 5, 9, 33, 7], [1, 100, 200]]
    ref = generate(model, prompts, max_new_tokens=6, greedy=True)
    monkeypatch.setitem(kernels.DECODE_AUTO, "cpu", "pallas_gpu")  # the kernel, in interpret mode
    jax.clear_caches()  # `auto` is resolved at trace time: retrace
    assert "bolt_decode_attention" in str(jax.make_jaxpr(
        lambda *a: kernels.decode_attention(*a[:3], kv_segment_ids_BxT=a[3], lengths_B=a[4]))(*cache()))
    got = generate(model, prompts, max_new_tokens=6, greedy=True)
    assert got.tokens == ref.tokens
    np.testing.assert_allclose(got.logq, ref.logq, atol=1e-4)
