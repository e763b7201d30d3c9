"""The sampler and scorer against transformers.LlamaForCausalLM (greedy tokens, teacher-forced log-probs) and
against a numpy implementation of the sampling transforms (exact log q, empirical frequencies)."""

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from bolt_jax.model import Llama, LlamaConfig
from bolt_jax.model.hf_layout import load_params_into, params_from_hf
from bolt_jax.sampling import generate, score, span_sums
from tests.helpers import build_hf_model

PROMPTS = [[1, 5, 9, 33, 7], [1, 100, 200], [1, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaForCausalLM
    d = build_hf_model(tmp_path_factory.mktemp("hf"))
    cfg = LlamaConfig.from_hf_json(d, compute_dtype="float32")
    ours = Llama(cfg, nnx.Rngs(0))
    load_params_into(ours, params_from_hf(cfg, load_file(f"{d}/model.safetensors").__getitem__))
    hf = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    return ours, hf, AutoTokenizer.from_pretrained(d)


def hf_logprobs(hf, seq):
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([seq])).logits[0].double(), -1).numpy()


def np_transform(logits, temperature, top_k, top_p, banned=()):
    """The sampling distribution written out in numpy: temperature, ban, top-k (ties kept), top-p, renormalise."""
    x = logits.astype(np.float64) / temperature
    x[list(banned)] = -np.inf
    if top_k:
        kth = np.sort(x)[::-1][top_k - 1]
        x[x < kth] = -np.inf
    if top_p < 1:
        order = np.argsort(-x, kind="stable")
        p = np.exp(x[order] - x[order][0])
        p /= p.sum()
        before = np.cumsum(p) - p
        drop = order[before >= top_p]
        x[drop] = -np.inf
    return x - (np.log(np.sum(np.exp(x[np.isfinite(x)] - x.max()))) + x.max())


def test_greedy_matches_transformers_generate(models):
    ours, hf, _ = models
    r = generate(ours, PROMPTS, max_new_tokens=12, greedy=True)
    for p, toks in zip(PROMPTS, r.tokens):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(p):]
        assert toks == ref.tolist()
    assert r.lengths.tolist() == [12, 12, 12] and not r.done.any()


def test_score_matches_transformers_log_softmax_with_packing(models):
    ours, hf, _ = models
    seqs = [p + list(range(300, 300 + k)) for p, k in zip(PROMPTS, (4, 9, 2))] + [[1, 7]]
    lps = score(ours, seqs, row_len=64)  # several sequences share a row
    for s, lp in zip(seqs, lps):
        ref = hf_logprobs(hf, s)
        np.testing.assert_allclose(lp[1:], [ref[j - 1, s[j]] for j in range(1, len(s))], atol=2e-5)
        assert lp[0] == 0
    sums = span_sums(lps, [len(p) for p in PROMPTS] + [1])
    assert sums[0] == pytest.approx(float(np.sum(lps[0][5:])))


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 20, 1.0),
                                                       (1.0, 0, 0.8), (0.8, 50, 0.9)])
def test_logq_is_exact_for_the_transformed_distribution(models, temperature, top_k, top_p):
    ours, hf, _ = models
    banned = (3, 4)
    r = generate(ours, PROMPTS, n=2, max_new_tokens=6, temperature=temperature, top_k=top_k, top_p=top_p,
                 banned_token_ids=banned, seed=11)
    for row, toks in enumerate(r.tokens):
        seq = PROMPTS[row // 2] + toks
        ref = hf_logprobs(hf, seq)
        start = len(PROMPTS[row // 2])
        for t, tok in enumerate(toks):
            logits = np.log(np.exp(ref[start + t - 1]))  # HF log-softmax = logits up to a constant
            expected = np_transform(logits, temperature, top_k, top_p, banned)
            assert np.isfinite(expected[tok]) and tok not in banned
            assert r.token_logq[row][t] == pytest.approx(expected[tok], abs=2e-4)
        assert r.logq[row] == pytest.approx(r.token_logq[row].sum())


def test_first_token_frequencies_match_the_truncated_distribution(models):
    ours, hf, _ = models
    prompt = [1, 5, 9]
    n = 4000
    r = generate(ours, [prompt], n=n, max_new_tokens=1, temperature=1.0, top_k=5, top_p=0.95, seed=5)
    probs = np.exp(np_transform(np.asarray(hf_logprobs(hf, prompt)[-1]), 1.0, 5, 0.95))
    support = np.flatnonzero(probs > 0)
    counts = np.bincount([t[0] for t in r.tokens], minlength=len(probs))
    assert set(np.flatnonzero(counts)) <= set(support)
    expected = n * probs[support]
    chi2 = float(np.sum((counts[support] - expected) ** 2 / expected))
    assert chi2 < 20.5  # chi-square with <= 5 dof at p = 0.001


def test_stop_token_banned_tokens_and_prompt_truncation(models):
    ours, hf, tok = models
    greedy = generate(ours, [PROMPTS[0]], max_new_tokens=8, greedy=True)
    stop = greedy.tokens[0][3]  # the 4th greedy token as a stop id
    r = generate(ours, [PROMPTS[0]], max_new_tokens=8, greedy=True, stop_token_ids=[stop])
    assert r.tokens[0] == greedy.tokens[0][:3] and r.done[0] and r.lengths[0] == 3
    assert len(r.token_logq[0]) == 4  # the stop token's log q counts in the sum
    banned = generate(ours, [PROMPTS[0]], max_new_tokens=8, greedy=True, banned_token_ids=[greedy.tokens[0][0]])
    assert greedy.tokens[0][0] not in banned.tokens[0]
    t = generate(ours, PROMPTS, max_new_tokens=2, greedy=True, max_prompt_len=4)
    assert t.num_truncated_prompts == 2 and t.prompt_lengths == [4, 3, 4]
    # left truncation keeps the end of the prompt
    same = generate(ours, [PROMPTS[2][-4:]], max_new_tokens=2, greedy=True)
    assert t.tokens[2] == same.tokens[0]


def test_stop_strings_cut_the_text(models):
    ours, _, tok = models
    r = generate(ours, [PROMPTS[1]], max_new_tokens=10, greedy=True, tokenizer=tok)
    text = r.texts[0]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    cut = generate(ours, [PROMPTS[1]], max_new_tokens=10, greedy=True, tokenizer=tok, stop_strings=[stop])
    assert cut.texts[0] == text[:text.find(stop)] and cut.done[0]


def test_results_do_not_depend_on_sharding(models):
    from bolt_jax import parallel
    from bolt_jax.model import create_model
    ours, _, _ = models
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = create_model(ours.config, mesh)
    nnx.update(sharded, nnx.state(ours))  # same weights, now in the mesh's shardings
    kw = dict(n=3, max_new_tokens=6, temperature=1.0, top_k=40, seed=9)
    a = generate(ours, PROMPTS, **kw)
    b = generate(sharded, PROMPTS, mesh=mesh, **kw)
    assert a.tokens == b.tokens
    np.testing.assert_allclose(a.logq, b.logq, atol=1e-4)
    # and the n samples of a prompt differ from each other (independent draws after one shared prefill)
    assert len({tuple(t) for t in a.tokens[:3]}) > 1


def test_prompt_seeds_make_samples_independent_of_batch_composition(models):
    ours, _, _ = models
    kw = dict(n=2, max_new_tokens=5, temperature=1.0)
    together = generate(ours, PROMPTS, prompt_seeds=[11, 12, 13], **kw)
    alone = generate(ours, [PROMPTS[2]], prompt_seeds=[13], **kw)
    assert together.tokens[4:6] == alone.tokens


def test_n_samples_share_one_prefill_in_the_compiled_program(models):
    """Compiled cost: 8 prompts x 4 samples costs far less than 32 prompts x 1 sample (prefill runs per prompt)."""
    import jax.numpy as jnp

    from bolt_jax.model.llama import pure_dict
    from bolt_jax.sampling.sampler import _generate_core
    ours, _, _ = models
    graphdef, state = nnx.split(ours)
    params = pure_dict(state)

    def flops(b, n):
        keys = jnp.zeros((b, 2), jnp.uint32)
        args = (graphdef, params, jnp.zeros((b, 128), jnp.int32), jnp.zeros((b,), jnp.int32), keys)
        kw = dict(n=n, max_new_tokens=2, temperature=1.0, top_k=0, top_p=1.0, greedy=False, stop_ids=(),
                  banned_ids=())
        cost = _generate_core.lower(*args, **kw).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return cost["flops"]

    shared, separate = flops(8, 4), flops(32, 1)
    assert shared < 0.4 * separate


def test_cache_memory_accounting_refuses_what_cannot_fit(models):
    from bolt_jax.sampling.sampler import cache_bytes, check_cache_fits
    ours, _, _ = models
    cfg = ours.config
    assert cache_bytes(cfg, 4, 100) == 2 * cfg.num_hidden_layers * 4 * 100 * cfg.kv_size * 4
    with pytest.raises(MemoryError, match="KV cache for 128 rows"):
        generate(ours, PROMPTS, n=16, max_new_tokens=64, max_cache_bytes=1000)
    assert check_cache_fits(cfg, rows=8, time=64, limit_bytes=10**9) == cache_bytes(cfg, 8, 64)


def test_generate_workflow(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from convert.hf_to_orbax import convert_hf_to_orbax
    from tests.helpers import repo_root
    convert_hf_to_orbax(build_hf_model(tmp_path / "hf"), str(tmp_path / "ckpt"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", "--config", "configs/generate.py",
                        f"--config.generate.checkpoint={tmp_path / 'ckpt'}", "--config.generate.prompts=Ava has|Ben",
                        "--config.generate.n=2", "--config.generate.max_new_tokens=5",
                        f"--config.generate.output_path={tmp_path / 'out.jsonl'}"],
                       cwd=repo_root(), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(l) for l in open(tmp_path / "out.jsonl")]
    assert len(rows) == 4 and "tokens/s" in r.stdout


def test_generate_prompts_and_stop_strings_keep_special_tokens_whole():
    """`generate.prompts` / `generate.stop_strings` used to be split on every `|`, cutting `<|START_OF_LATENT|>` into
    pieces: the BoLT tokens (formats.SPECIAL_TOKENS, literal) survive a `|` split and a JSON list; a `<|` or `|>`
    that belongs to no token name is refused in one line."""
    import ml_collections

    from bolt_jax.data.formats import SPECIAL_TOKENS
    from bolt_jax.sampling.cli import read_prompts, split_list
    assert SPECIAL_TOKENS == ("<|START_OF_LATENT|>", "<|END_OF_LATENT|>", "<|PRIOR_PREFIX|>", "<|POSTERIOR_PREFIX|>")
    sol, eol, prior, posterior = SPECIAL_TOKENS
    prior_prompt = f"start_4 , first_double .{sol}{prior}"
    assert split_list(f"{prior_prompt}|Ben has|{sol}{posterior} x {eol}", "prompts") == [
        prior_prompt, "Ben has", f"{sol}{posterior} x {eol}"]
    assert split_list("Ava has 3.|Compute (2 + 3) * 4.", "prompts") == ["Ava has 3.", "Compute (2 + 3) * 4."]
    assert split_list(f"{eol}|\n\n", "stop_strings") == [eol, "\n\n"]
    assert split_list(f'["a|b{eol}", "{prior_prompt}", ""]', "prompts") == [f"a|b{eol}", prior_prompt]
    assert split_list("", "stop_strings") == []
    for bad, message in [("a<|START_OF|LATENT|>", "is ambiguous"), ("x|>y", "is ambiguous"),
                         ("[1, 2]", "must be a JSON list of strings"), ("[oops", "is not a JSON list")]:
        with pytest.raises(ValueError, match=message) as err:
            split_list(bad, "prompts")
        assert "\n" not in str(err.value) and "config.generate.prompts" in str(err.value)
    g = ml_collections.ConfigDict({"prompts": f'["{prior_prompt}"]', "prompts_file": ""})
    assert read_prompts(g) == [prior_prompt]


def test_decode_impl_from_the_config_reaches_decode_attention(monkeypatch):
    """The model config's decode kernel choice (`decode_impl`) is what every decode step's attention call receives,
    and the kernel (interpret mode on CPU) gives the XLA path's tokens and log q."""
    import jax

    from bolt_jax import kernels
    from bolt_jax.model import preset

    seen = []
    real = kernels.decode_attention

    def recording(*args, impl="auto", **kwargs):
        seen.append(impl)
        return real(*args, impl=impl, **kwargs)

    monkeypatch.setattr(kernels, "decode_attention", recording)
    jax.clear_caches()  # the impl is read at trace time: retrace
    base = preset("tiny", compute_dtype="float32")
    prompts = [[1, 5, 9, 33, 7], [1, 100, 200]]
    ref = generate(Llama(base, nnx.Rngs(0)), prompts, max_new_tokens=4, greedy=True)
    assert seen and set(seen) == {"auto"}
    seen.clear()
    cfg = base.replace(decode_impl="pallas_gpu")  # the kernel, in interpret mode on CPU
    got = generate(Llama(cfg, nnx.Rngs(0)), prompts, max_new_tokens=4, greedy=True)
    assert len(seen) == base.num_hidden_layers and set(seen) == {"pallas_gpu"}  # one call per layer in the loop body
    assert got.tokens == ref.tokens
    np.testing.assert_allclose(got.logq, ref.logq, atol=1e-4)
