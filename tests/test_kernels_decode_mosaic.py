"""The Mosaic GPU decode attention (kernels/decode_mosaic_gpu.py: the flash forward of mosaic_gpu.py with a KV head's
queries as its rows) against the XLA decode path: its pure-JAX twin, and the real kernel run in jax's Mosaic GPU
interpreter on this CPU (TMA copies, barriers, wgmma and the warp-specialized schedule simulated); the kernel lowered
for the cuda platform; the sampler's greedy tokens with it; and `auto` where jax has no Triton backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bolt_jax import kernels
from bolt_jax.kernels import platform
from bolt_jax.kernels.decode import NEG, xla_decode_attention_lse
from bolt_jax.kernels.decode_mosaic_gpu import mosaic_decode_attention
from bolt_jax.kernels.mosaic_gpu import mosaic_forward, pure_jax_twin
from tests.mosaic_interpreter import NEEDS_INTERPRETER, mosaic_gpu_interpreter
from tests.test_kernels_decode import cache

D = 64  # wgmma's head tiles


def _queries(b, nq, h, dtype, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, nq, h, D)), dtype)


def _problem(b, nq, h, k, dtype, lengths, t=256):
    """Rows with left padding, a row of one key, one crossing a block, one of length 0 (output 0, lse NEG)."""
    _, kc, vc, seg, _ = cache(b=b, t=t, h=h, k=k, d=D, dtype=dtype, seed=5)
    return _queries(b, nq, h, dtype), kc, vc, dict(kv_segment_ids_BxT=seg, lengths_B=jnp.asarray(lengths, jnp.int32))


def _assert_matches_reference(q, kc, vc, kw, atol, **call):
    got, got_lse = mosaic_decode_attention(q, kc, vc, return_lse=True, **kw, **call)
    want, want_lse = xla_decode_attention_lse(q, kc, vc, **kw)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=atol)
    np.testing.assert_allclose(got_lse, want_lse, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("heads", [(8, 2), (4, 4), (32, 4), (9, 3)])
@pytest.mark.parametrize("nq", [1, 4, 16])
def test_twin_matches_reference(heads, nq, dtype=jnp.float32, atol=3e-5):
    """The algorithm on CPU (what `decode_impl=mosaic_gpu` runs off a GPU): 1, 4 or 16 queries per row (samples
    sharing a prompt), GQA groups of 4, 1, 8 and 3: one compute warpgroup's 64-row tile where a KV head's rows fit it,
    two warpgroups' 128 where not (group 8 x 16 queries: one full 128-row tile)."""
    q, kc, vc, kw = _problem(4, nq, *heads, dtype, lengths=[200, 1, 130, 0])
    _assert_matches_reference(q, kc, vc, kw, atol, interpret=True)


@pytest.mark.parametrize("compute_wgs", [1, 2])
def test_a_forced_layout_matches_reference(compute_wgs, monkeypatch):
    """`compute_wgs` forces one or two compute warpgroups whatever the rows (bench/decode_kernels.py's A/B): the
    layout asked for is the one run, and both give the reference's attention, here on 8 rows (which the choice
    puts in one warpgroup)."""
    from bolt_jax.kernels import decode_mosaic_gpu
    used = []

    def twin(*args, blocks, **kw):
        used.append(blocks.compute_wgs)
        return pure_jax_twin(*args, blocks=blocks, **kw)

    monkeypatch.setattr(decode_mosaic_gpu, "pure_jax_twin", twin)
    q, kc, vc, kw = _problem(3, 1, 16, 2, jnp.float32, lengths=[256, 1, 130])
    _assert_matches_reference(q, kc, vc, kw, 3e-5, interpret=True, compute_wgs=compute_wgs)
    assert used == [compute_wgs]


@NEEDS_INTERPRETER
@pytest.mark.parametrize("nq,heads,compute_wgs", [(1, (16, 2), 1), (4, (9, 3), 1), (5, (16, 1), 2)])
def test_kernel_in_the_mosaic_gpu_interpreter_matches_reference(nq, heads, compute_wgs, monkeypatch):
    """The real kernel, bf16 as on a GPU: TinyLlama's group of 8 (one query per row) and SmolLM2's group of 3 with
    four queries per row (12 rows), both in one compute warpgroup's 64-row tile; a group of 16 with five queries per
    row (80 rows) in two warpgroups' 128. A 512-position cache: the first row's 4 blocks refill the 2-slot TMA ring
    twice. The tolerance is bf16's: P is rounded to bf16 before P V."""
    from bolt_jax.kernels import decode_mosaic_gpu
    used = []

    def forward(*args, blocks, **kw):
        used.append(blocks.compute_wgs)
        return mosaic_forward(*args, blocks=blocks, **kw)

    monkeypatch.setattr(decode_mosaic_gpu, "mosaic_forward", forward)
    q, kc, vc, kw = _problem(3, nq, *heads, jnp.bfloat16, lengths=[512, 1, 130], t=512)
    with mosaic_gpu_interpreter():
        _assert_matches_reference(q, kc, vc, kw, 2e-2, interpret=False)
    assert used == [compute_wgs]


@NEEDS_INTERPRETER
def test_kernel_has_no_race_by_the_interpreters_race_detector():
    """The decode kernel under the interpreter's race detector (tests/mosaic_interpreter.py): no race, with a cache
    whose TMA ring refills, in its one-compute-warpgroup form (the two-warpgroup forward has its own race test in
    tests/test_kernels_mosaic.py)."""
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call
    q, kc, vc, kw = _problem(3, 1, 8, 2, jnp.bfloat16, lengths=[512, 1, 130], t=512)
    with mosaic_gpu_interpreter(detect_races=True):
        jax.block_until_ready(mosaic_decode_attention(q, kc, vc, interpret=False, **kw))
    assert not interpret_pallas_call.get_races().races_found


def test_kernel_lowers_to_mosaic_gpu():
    """Traced and lowered for the cuda platform on this CPU (compiling the PTX happens on the GPU)."""
    q, kc, vc, kw = _problem(4, 1, 32, 4, jnp.bfloat16, lengths=[256, 1, 130, 0])
    exported = jax.export.export(jax.jit(lambda q, k, v, s, n: mosaic_decode_attention(
        q, k, v, kv_segment_ids_BxT=s, lengths_B=n, interpret=False)), platforms=["cuda"])(
        q, kc, vc, kw["kv_segment_ids_BxT"], kw["lengths_B"])
    assert "mosaic_gpu" in exported.mlir_module()
    assert exported.out_avals[0].shape == q.shape


@pytest.mark.parametrize("t", [16, 200, 320])
def test_caches_of_no_whole_128_blocks(t):
    """Shared-prompt entries of a 16-token bucket (padded to one block of 64), a cache of 200 (padded to 256 in blocks
    of 64) and one of 320 (blocks of 64, no padding)."""
    q, kc, vc, kw = _problem(3, 2, 8, 2, jnp.float32, lengths=[min(t, 150), 1, t], t=t)
    _assert_matches_reference(q, kc, vc, kw, 3e-5, interpret=True)


def test_sampler_decodes_the_same_tokens_with_it():
    from flax import nnx

    from bolt_jax.model import Llama, preset
    from bolt_jax.sampling import generate
    cfg = preset("tiny", hidden_size=256, num_attention_heads=4, num_key_value_heads=2, compute_dtype="float32")
    model = Llama(cfg, nnx.Rngs(0))
    prompts = [[1, 5, 9, 33, 7], [1, 100, 200]]
    ref = generate(model, prompts, max_new_tokens=6, greedy=True)
    model = Llama(cfg.replace(decode_impl="mosaic_gpu"), nnx.Rngs(0))
    got = generate(model, prompts, max_new_tokens=6, greedy=True)
    assert got.tokens == ref.tokens
    np.testing.assert_allclose(got.logq, ref.logq, atol=1e-4)


def test_auto_leaves_triton_when_jax_has_no_triton_backend(monkeypatch):
    """Once jax drops Pallas' Triton backend: decode `auto` on a GPU takes the Mosaic GPU kernel (XLA where wgmma
    cannot take the inputs), attention's Triton fallbacks become XLA, and an explicit pallas_gpu is refused in one
    line."""
    monkeypatch.setattr(kernels, "pallas_triton_available", lambda: False)
    bf16, f32 = jnp.bfloat16, jnp.float32
    assert kernels.resolve_decode_impl("auto", "gpu", bf16, 64) == "mosaic_gpu"
    assert kernels.resolve_decode_impl("auto", "gpu", f32, 64) == "xla"
    assert kernels.resolve_decode_impl("auto", "gpu", bf16, 32) == "xla"
    assert kernels.resolve_decode_impl("auto", "tpu", bf16, 64) == "pallas_tpu"
    assert kernels.resolve_impl("auto", backend="gpu", documents=True, arch="8.0") == "xla"
    assert kernels.resolve_impl("auto", backend="gpu", documents=True, arch="9.0") == "mosaic_gpu"
    monkeypatch.setattr(kernels, "target_platform", lambda: "gpu")
    q, kc, vc, kw = _problem(3, 1, 8, 2, bf16, lengths=[3, 1, 2])
    with pytest.raises(ValueError, match="no longer has"):
        kernels.decode_attention(q, kc, vc, impl="pallas_gpu", **kw)
    monkeypatch.undo()
    assert kernels.resolve_decode_impl("auto", "gpu", bf16, 64) == ("pallas_gpu" if platform.pallas_triton_available()
                                                                     else "mosaic_gpu")


def test_an_empty_row_gives_zero_and_neg():
    q, kc, vc, kw = _problem(3, 2, 8, 2, jnp.float32, lengths=[0, 5, 1])
    out, lse = mosaic_decode_attention(q, kc, vc, return_lse=True, interpret=True, **kw)
    assert not np.asarray(out[0]).any() and (np.asarray(lse[0]) == NEG).all()
