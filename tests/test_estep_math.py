"""E-step weights, resampling, ELBO and token layouts against plain implementations of the spec's formulas."""

import math

import numpy as np
import pytest

from bolt_jax.estep import sequences, weights


def spec_softmax(logw):
    m = max(logw)
    e = [math.exp(x - m) for x in logw]
    return [x / sum(e) for x in e]


def spec_elbo(logw, n):
    xs = logw[:n]
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs)) - math.log(n)


def test_weights_and_elbo_match_spec_formulas():
    rng = np.random.default_rng(0)
    for _ in range(20):
        joint = rng.normal(-80, 10, 4).tolist()
        gen = rng.normal(-60, 10, 4).tolist()
        logw = [j - g for j, g in zip(joint, gen)]
        np.testing.assert_allclose(weights.log_weights(joint, gen), logw)
        np.testing.assert_allclose(weights.normalized(logw), spec_softmax(logw), rtol=1e-12)
        for n in (1, 2, 4):
            assert weights.elbo(logw, n) == pytest.approx(spec_elbo(logw, n), rel=1e-12)
        w = spec_softmax(logw)
        assert weights.effective_sample_size(logw) == pytest.approx(1 / sum(x * x for x in w))
    # the IWAE bound grows with n in expectation; with equal weights it is exact
    assert weights.elbo([-3.0] * 4, 4) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="non-finite"):
        weights.normalized([0.0, float("nan")])


def test_resampling_frequencies_follow_the_weights():
    logw = [0.0, math.log(3.0), -1.0, math.log(0.5)]
    p = np.array(spec_softmax(logw))
    n = 20000
    counts = np.bincount([weights.resample(logw, weights.chunk_rng(7, doc, 0)) for doc in range(n)], minlength=4)
    chi2 = float(np.sum((counts - n * p) ** 2 / (n * p)))
    assert chi2 < 16.27  # chi-square, 3 degrees of freedom, p = 0.001
    # keyed by (seed, document, chunk): the same chunk always gets the same choice, whatever order
    assert weights.resample(logw, weights.chunk_rng(7, 5, 2)) == weights.resample(logw, weights.chunk_rng(7, 5, 2))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from bolt_jax.data.tokenizer import load_tokenizer
    from tests.helpers import build_tokenizer
    return load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")))


SOL, EOL, PRIOR, POST = "<|START_OF_LATENT|>", "<|END_OF_LATENT|>", "<|PRIOR_PREFIX|>", "<|POSTERIOR_PREFIX|>"


def test_posterior_prompt_layout_and_left_truncation(tok):
    first = sequences.posterior_prompt_tokens(tok, "N/A", "Ben has 3 pens.", 1000)
    assert first.tokens == [tok.bos_id] + tok.encode("Ben has 3 pens." + SOL + POST) and first.truncated == 0
    later = sequences.posterior_prompt_tokens(tok, "Ava sold 48 clips.", " Ben has 3 pens.", 1000)
    assert later.tokens == [tok.bos_id] + tok.encode("Ava sold 48 clips." + SOL + EOL + " Ben has 3 pens." + SOL + POST)
    cut = sequences.posterior_prompt_tokens(tok, "Ava sold 48 clips.", " Ben has 3 pens.", 6)
    assert cut.tokens == later.tokens[-6:] and cut.truncated == len(later.tokens) - 6
    assert cut.tokens[-2:] == [tok.special_ids[SOL], tok.special_ids[POST]]


def test_joint_layout_and_scored_span(tok):
    j = sequences.joint_sequences(tok, "Ava sold 48 clips.", ["48/2 = 24.", "so 24"], " She sold 24.", 1000)
    context = [tok.bos_id] + tok.encode("Ava sold 48 clips.")
    assert j.sequences[0] == context + tok.encode(SOL + PRIOR + "48/2 = 24." + EOL + " She sold 24.")
    assert j.sequences[1] == context + tok.encode(SOL + PRIOR + "so 24" + EOL + " She sold 24.")
    assert j.prefix_len == len(context)
    # original accounting: the <SoL> right after the prefix is not summed; corrected: it is
    assert j.sequences[0][j.score_from] == tok.special_ids[PRIOR]
    c = sequences.joint_sequences(tok, "Ava sold 48 clips.", ["x"], " y", 1000, accounting="corrected")
    assert c.sequences[0][c.score_from] == tok.special_ids[SOL]
    first = sequences.joint_sequences(tok, "N/A", ["z"], "Ben has 3 pens.", 1000)
    assert first.sequences[0] == [tok.bos_id] + tok.encode(SOL + PRIOR + "z" + EOL + "Ben has 3 pens.")
    assert first.prefix_len == 1  # BOS only


def test_joint_truncation_cuts_prefix_left_then_suffix_right_for_all_samples(tok):
    prefix, suffix = "Ava sold 48 clips in April and May.", " She sold 24 clips."
    latents = ["48/2 = 24.", "48/2 = 24. Then 48+24 = 72."]
    full = sequences.joint_sequences(tok, prefix, latents, suffix, 10_000)
    longest = max(full.lengths)
    # 1. only the prefix needs cutting
    j = sequences.joint_sequences(tok, prefix, latents, suffix, longest - 3)
    assert j.prefix_truncated == 3 and j.suffix_truncated == 0 and j.prefix_len == full.prefix_len - 3
    for s, f in zip(j.sequences, full.sequences):
        assert s == f[3:]  # BOS is gone too, as the original
    assert max(j.lengths) == longest - 3
    # 2. more than the whole prefix: the rest comes off the end of the suffix, the same amount for every sample
    excess = full.prefix_len + 2
    j = sequences.joint_sequences(tok, prefix, latents, suffix, longest - excess)
    assert j.prefix_truncated == full.prefix_len and j.suffix_truncated == 2 and j.prefix_len == 0
    for s, f in zip(j.sequences, full.sequences):
        assert s == f[full.prefix_len:len(f) - 2]
    assert j.score_from == 1  # original accounting still skips the <SoL>


def test_span_sum():
    lp = np.array([0.0, -1.0, -2.0, -3.0, -4.0])  # lp[j] = log p(token j | < j); lp[0] is undefined
    assert sequences.span_sum(lp, 3) == -7.0
    assert sequences.span_sum(lp, 0) == -10.0
