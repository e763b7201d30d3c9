"""EOS ends an E-step thought (spec 8.4: "per-sequence stopping on token id 32001 (<EoL>) or EOS ... the stop token
stripped from the text but included in the logprob sum"), and the joint that the E-step scores closes such a thought
with <EoL> like any other (spec 5.3: `prefix <SoL><PRIOR> latent <EoL> suffix`, the latent being the stripped text).

The oracle is a tiny random model whose EOS logit is pushed up (EOS is sampled after a few tokens) and whose <EoL>
logit is pushed far down (so every stop is an EOS stop), scored teacher-forced by `bolt_jax.sampling.score`."""

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from bolt_jax.data.formats import EOL, PRIOR, SOL
from bolt_jax.data.tokenizer import load_tokenizer
from bolt_jax.estep import sequences
from bolt_jax.estep.backend import JaxBackend
from bolt_jax.estep.run import Chunk, default_estep_config, process_batch
from bolt_jax.model import Llama, LlamaConfig
from bolt_jax.model.hf_layout import load_params_into, params_from_hf
from bolt_jax.sampling import score
from tests.helpers import build_hf_model

MAX_NEW = 48
CHUNKS = [Chunk("0:0", 0, 0, "", "Natalia sold 48 clips in April."),
          Chunk("0:1", 0, 1, "Natalia sold 48 clips in April.", " She sold half as many clips in May."),
          Chunk("1:0", 1, 0, "", "Weng earns $12 an hour for babysitting.")]


def force_eos(model: Llama, tok, eos_logit: float = 6.5, eol_logit: float = -40.0) -> None:
    """Residual dimension 0 carries a constant (every embedding gets 0.3 there), so the final normed hidden state is
    ~5 in that dimension at every position; the head reads it into EOS (+eos_logit) and <EoL> (eol_logit), and the
    other logits keep their random (4x sharpened) dependence on the context."""
    emb = np.array(model.embed_tokens[...])
    emb[:, 0] = 0.3
    model.embed_tokens[...] = emb
    h0 = float(np.mean(np.asarray(model.hidden_states(np.array([[1, 50, 60, 70], [1, 5, 9, 33]])))[..., 0]))
    kernel = 4 * np.array(model.lm_head.kernel[...])
    kernel[0, :] = 0
    kernel[0, tok.eos_id] = eos_logit / h0
    kernel[0, tok.special_ids[EOL]] = eol_logit / h0
    model.lm_head.kernel[...] = kernel


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = build_hf_model(tmp_path_factory.mktemp("hf"))
    cfg = LlamaConfig.from_hf_json(d, compute_dtype="float32")
    model = Llama(cfg, nnx.Rngs(0))
    load_params_into(model, params_from_hf(cfg, load_file(f"{d}/model.safetensors").__getitem__))
    tok = load_tokenizer(d)
    force_eos(model, tok)
    e = default_estep_config()
    e.update(num_samples=4, max_new_tokens=MAX_NEW, max_prompt_len=64, max_tokens=160)
    return model, tok, e


def test_the_model_emits_eos_often_and_eol_never(setup):
    model, tok, _ = setup
    lp = score(model, [[1, 50, 60, 70, 80, 90, 100]])[0]
    logits = np.asarray(model(np.array([[1, 50, 60, 70, 80, 90, 100]])))[0]
    log_p = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    assert np.all(np.exp(log_p[:, tok.eos_id]) > 0.1) and np.all(log_p[:, tok.special_ids[EOL]] < -30)
    assert np.all(lp[1:] < 0)


def test_eos_stops_sampling_and_its_logq_stays_in_the_sum(setup):
    model, tok, e = setup
    backend = JaxBackend(model, tok, e)
    prompts = [sequences.posterior_prompt_tokens(tok, c.prefix, c.suffix, e.max_prompt_len).tokens for c in CHUNKS]
    samples = backend.sample(prompts, n=4, seeds=[3, 5, 7])
    flat = [(p, s) for p, row in zip(prompts, samples) for s in row]
    assert len(flat) == 12
    assert all(s.done for _, s in flat)  # every thought stopped (at EOS: <EoL> has log p < -30)
    assert all(tok.eos_id not in s.tokens and tok.special_ids[EOL] not in s.tokens for _, s in flat)
    assert all(len(s.tokens) < MAX_NEW for _, s in flat)
    lengths = [len(s.tokens) for _, s in flat]
    assert max(lengths) >= 2 and len(set(lengths)) >= 3  # thoughts of several lengths, not just an immediate EOS

    # log q at T=1 = log p of the thought's tokens and of the EOS that ended it, teacher-forced on the prompt
    with_eos = score(model, [p + s.tokens + [tok.eos_id] for p, s in flat])
    for (p, s), lp in zip(flat, with_eos):
        expected = float(np.sum(lp[len(p):]))
        eos_term = float(lp[-1])
        assert s.logq == pytest.approx(expected, abs=1e-3)
        assert eos_term < -0.1 and abs(s.logq - (expected - eos_term)) > 0.1  # the EOS term is really in the sum


def test_the_joint_of_an_eos_thought_is_closed_by_eol(setup):
    model, tok, e = setup
    backend = JaxBackend(model, tok, e)
    scored = []
    real_score = backend.score

    def recording_score(seqs):
        scored.extend(list(s) for s in seqs)
        return real_score(seqs)

    backend.score = recording_score
    rows = process_batch(CHUNKS, backend, tok, e)
    assert len(scored) == len(CHUNKS) * e.num_samples
    sol, prior, eol = (tok.special_ids[t] for t in (SOL, PRIOR, EOL))
    for i, (c, row) in enumerate(zip(CHUNKS, rows)):
        context = [tok.bos_id] + (tok.encode(c.prefix) if c.prefix else [])
        for k in range(e.num_samples):
            latent = row["latents"][k]
            assert row["done"][k] and tok.decode(row["latent_tokens"][k]) == latent
            assert tok.eos_text not in latent and tok.eos_id not in row["latent_tokens"][k]
            # spec 5.3: BOS + prefix <SoL><PRIOR> latent <EoL> suffix, the EOS gone from the latent
            expected = context + [sol, prior] + tok.encode(latent) + [eol] + tok.encode(c.suffix)
            seq = scored[i * e.num_samples + k]
            assert seq == expected
            assert tok.eos_id not in seq and seq.count(eol) == 1
            lp = real_score([seq])[0]
            assert row["joint_logprob"][k] == pytest.approx(sequences.span_sum(lp, len(context) + 1), abs=1e-3)
            assert row["log_weight"][k] == pytest.approx(row["joint_logprob"][k] - row["gen_logprob"][k])


def test_the_continuous_scheduler_stops_at_eos_alike(setup):
    """The E-step's stop ids give the same EOS-ended thoughts under both schedulers (the continuous one is the
    E-step's natural choice: its thoughts vary in length)."""
    from bolt_jax.sampling import generate
    model, tok, e = setup
    backend = JaxBackend(model, tok, e)
    prompts = [sequences.posterior_prompt_tokens(tok, c.prefix, c.suffix, e.max_prompt_len).tokens for c in CHUNKS]
    static = backend.sample(prompts, n=4, seeds=[3, 5, 7])
    cont = generate(model, prompts, n=4, max_new_tokens=MAX_NEW, stop_token_ids=backend.stop_ids,
                    max_prompt_len=e.max_prompt_len, prompt_seeds=[3, 5, 7], scheduler="continuous", decode_slots=4)
    flat = [s for row in static for s in row]
    assert cont.tokens == [s.tokens for s in flat] and cont.done.tolist() == [s.done for s in flat]
    np.testing.assert_allclose(cont.logq, [s.logq for s in flat], atol=1e-4)
