"""bench/headline.py: the smoke run writes the same headline.json schema as a GPU run, with every step's raw output;
and the packed-attention baselines lay documents out as the segment ids say (cuDNN's paths cannot run on a CPU, so
their layouts are checked here against the segment ids)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import attention  # noqa: E402  (bench/attention.py)
import headline  # noqa: E402  (bench/headline.py)
from common import Samples, pairwise  # noqa: E402


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[str, dict]:
    root = tmp_path_factory.mktemp("results")
    env = dict(os.environ, BOLT_COMMIT="testcommit")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "headline.py"), "--smoke", "--results_root",
                        str(root)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out_dir = os.path.join(root, f"{time.strftime('%Y-%m-%d')}-cpu-smoke")
    with open(os.path.join(out_dir, "headline.json")) as f:
        return out_dir, json.load(f)


@pytest.mark.slow  # the smoke headline runs every bench step on the CPU: about a minute (make test-slow)
def test_smoke_headline_has_every_figure_with_five_ordered_samples(smoke_run):
    _, h = smoke_run
    for key in headline.FIGURES:
        fig = h[key]
        assert set(fig) >= {"median", "min", "max", "samples"}, key
        assert len(fig["samples"]) >= headline.MIN_SAMPLES, key
        assert fig["min"] <= fig["median"] <= fig["max"], key
        assert fig["min"] == min(fig["samples"]) and fig["max"] == max(fig["samples"]), key
    assert isinstance(h["decode_kernel_max_abs_err"], float) and h["decode_kernel_max_abs_err"] < 0.1
    ratio = h["decode_mosaic_vs_pallas_b256"]  # the decode_kernels step: both kernels, run against run
    assert len(ratio["samples"]) >= headline.MIN_SAMPLES and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert isinstance(h["decode_mosaic_kernel_max_abs_err"], float) and h["decode_mosaic_kernel_max_abs_err"] < 0.1
    assert h["device"] == "cpu" and h["jax"] and h["commit"] == "testcommit" and h["smoke"] is True
    assert h["flop_per_token"] > 0
    assert set(h["targets"]) <= set(headline.FIGURES) and all(t["met"] is None for t in h["targets"].values())


@pytest.mark.slow
def test_smoke_headline_keeps_each_steps_raw_output(smoke_run):
    out_dir, h = smoke_run
    for step in headline.STEPS:
        assert h["steps"][step.name]["rc"] == 0
        for ext in ("log", "json"):
            assert os.path.getsize(os.path.join(out_dir, f"{step.name}.{ext}")) > 0
    assert "SMOKE" in open(os.path.join(out_dir, "headline.txt")).read()


def test_missing_figure_keeps_its_key():
    done = {"score": ({"rc": 1, "error": "exit 1: see score.log"}, None)}
    h = headline.assemble(done, {"device": "NVIDIA H100 80GB HBM3", "jax": "0"}, smoke=False)
    assert all(h[key]["median"] is None and "error" in h[key] for key in headline.FIGURES)
    assert h["targets"]["score_tokens_per_s"]["met"] is None
    assert headline.targets("NVIDIA H200")["decode_tokens_per_s_b256"].value == 120e3


def test_samples_and_run_against_run_ratio():
    s = Samples.of([3.0, 1.0, 2.0])
    assert (s.min, s.median, s.max) == (1.0, 2.0, 3.0) and s.summary()["samples"] == [3.0, 1.0, 2.0]
    assert pairwise(s, Samples.of([1.0, 1.0, 4.0]), lambda a, b: a / b).values == (3.0, 1.0, 0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_layouts_follow_the_segment_ids(seed):
    p = attention.ragged_docs(3, 256, min_len=8, max_len=128, seed=seed)
    seg = p.segment_ids()
    assert all(sum(row) == 256 for row in p.lengths) and min(p.all_lengths) >= 8
    # cuDNN THD: offsets and lengths rebuild the segment ids
    seqlen, offsets = attention.thd_offsets(p)
    for b in range(p.batch):
        rebuilt = np.zeros(256, np.int32)
        for m in range(int((seqlen[b] >= 0).sum())):
            rebuilt[offsets[b, m]:offsets[b, m] + seqlen[b, m]] = m + 1
        np.testing.assert_array_equal(rebuilt, seg[b])
        assert offsets[b, int((seqlen[b] >= 0).sum())] == 256
    # one sequence per document: gather then scatter is the identity on the packed tokens
    gather, valid, scatter, lens = attention.doc_index(p)
    flat = np.arange(p.batch * 256)
    docs = np.where(valid, flat[gather], -1)
    np.testing.assert_array_equal(docs.reshape(-1)[scatter], flat)
    assert (valid.sum(1) == lens).all() and gather.shape[1] % 64 == 0
    # the work done: within-document causal FLOPs only
    assert p.fwd_flops(1, 1) == sum(2 * n * n for n in lens) < attention.causal_rows(3, 256).fwd_flops(1, 1)


def test_cudnn_baselines_lower_for_cuda(monkeypatch):
    """The fair baselines cannot run on a CPU: their forward and backward are lowered for the cuda platform instead,
    so jax's own checks of the cuDNN calls (ranks, GQA, the packed layout's offsets) run here. jaxlib without CUDA
    has no cuDNN version and no GPU to ask for Hopper: both are stubbed (cuDNN 9.10, Hopper)."""
    import jax
    import jax.numpy as jnp
    from jax._src.cudnn import fused_attention_stablehlo as fa

    class CudaVersions:
        @staticmethod
        def cudnn_get_version() -> int:
            return 91000

    monkeypatch.setattr(fa, "cuda_versions", CudaVersions)
    monkeypatch.setattr(fa, "check_compute_capability", lambda capability: True)
    monkeypatch.setattr(fa, "is_cuda_compute_capability_equal", lambda capability: False)
    ragged = attention.ragged_docs(2, 512, min_len=16, max_len=256)
    x = attention.make_inputs(2, 512, 8, 2, 64)
    unchecked = [jax.export.DisabledSafetyCheck.custom_call(f"__cudnn$fmhaSoftmax{s}") for s in ("", "Backward")]
    for c in (attention.thd_candidate(ragged), attention.per_doc_candidate(ragged, "cudnn"),
              attention.per_doc_candidate(attention.equal_docs(2, 512, 4), "cudnn")):
        args, w = c.prepare(x.q, x.k, x.v, x.w)
        bwd = jax.grad(lambda *a, c=c: jnp.sum(c.attend(*a[:-1]).astype(jnp.float32) * a[-1]), argnums=(0, 1, 2))
        for fn, inputs in ((c.attend, args), (bwd, (*args, w))):
            shapes = [jax.ShapeDtypeStruct(t.shape, t.dtype) for t in inputs]
            text = jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=unchecked)(*shapes).mlir_module()
            assert "__cudnn$fmhaSoftmax" in text, c.name


def test_preflight_reads_every_steps_arguments_from_the_headline():
    """bench/gpu_preflight.py compiles what the headline runs, its arguments parsed from headline.STEPS by each
    script's own parser: a step whose arguments its script no longer takes fails here, not on a lent GPU."""
    import gpu_preflight  # bench/gpu_preflight.py
    for step in headline.STEPS:
        args = gpu_preflight.headline_args(step.name)
        assert vars(args), step.name
    assert set(gpu_preflight.PROGRAMS) == {s.name for s in headline.STEPS} - {"attention"}
    decode = gpu_preflight.headline_args("decode")
    assert (decode.batch, decode.new) == ("256,1024", 512)
    # the train steps give jax's allocator more than its default 75% (micro-batch 16: 61 GiB of an H100 under jax
    # 0.12.1), and the preflight judges their programs against that share
    assert all(gpu_preflight.headline_args(n).mem_fraction == 0.9 for n in ("train_packed", "train_concat"))


@pytest.mark.slow  # compiles TinyLlama's scorer and static sampler for an H100 on this CPU: about 40 s
def test_preflight_predicts_the_headlines_memory_on_an_h100(tmp_path):
    from bolt_jax.aot.topology import cuda_plugin
    if cuda_plugin() is None:
        pytest.skip("jax's CUDA plugin is not installed (the test extra has it)")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_preflight.py"), "--only", "score,decode",
                        "--results", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    rows = json.load(open(tmp_path / path))["rows"]
    assert [r["step"] for r in rows] == ["score", "decode", "decode"]
    # the batch-1024 call holds its KV cache (22 layers x 1024 rows x 1024 positions x 256 x 2 x bf16 = 22 GiB), and
    # beside it at most the weights (2.05 GiB) and the prefill's MLP at its widest, three [1024 x 512, 5632] bf16
    # tensors (16.5 GiB): measured 32.30 GiB under jax 0.12.0.1, 34.24 under 0.12.1
    cache_gib = 2 * 22 * 1024 * 1024 * 256 * 2 / 2**30
    bound_gib = cache_gib + 2.05 + 3 * 1024 * 512 * 5632 * 2 / 2**30
    assert cache_gib < rows[2]["gib"] < bound_gib and all(r["fits_allocator"] for r in rows)
