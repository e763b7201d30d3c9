"""The toy world's evaluation: importance-weight diagnostics against numpy, the posterior diagnostics' plumbing
against a hand computation on a fake model, E-step correctness, and the report's claims."""

import math

import numpy as np
import pytest

from bolt_jax.data import toy
from bolt_jax.data.chunking import ChunkingConfig
from bolt_jax.estep import weights
from bolt_jax.estep.backend import Sample
from bolt_jax.estep.run import default_estep_config, document_chunks


def test_true_thought_diagnostics_against_numpy():
    rng = np.random.default_rng(0)
    for trial in range(50):
        k = int(rng.integers(1, 9))
        log_w = rng.normal(0, 3, k)
        log_w_true = float(rng.normal(0, 3))
        correct = rng.random(k) < 0.5
        got = weights.true_thought_diagnostics(log_w, log_w_true, correct, np.random.default_rng(trial))
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        chosen = np.random.default_rng(trial).choice(k, p=w)
        assert got["sample_correct"] == pytest.approx(correct.mean())
        assert got["chosen_correct"] == float(correct[chosen])
        assert got["true_top"] == float(log_w_true >= log_w.max())
        assert got["ess"] == pytest.approx(1.0 / np.sum(w ** 2))


def test_chosen_correct_is_the_weight_on_correct_samples_on_average():
    log_w, correct = np.log([0.7, 0.1, 0.1, 0.1]), [True, False, False, False]
    chosen = [weights.true_thought_diagnostics(log_w, 0.0, correct, np.random.default_rng(s))["chosen_correct"]
              for s in range(4000)]
    assert np.mean(chosen) == pytest.approx(0.7, abs=0.03)


class FakeBackend:
    """Samples: fixed thoughts per chunk; scores: log p(token j) = -0.01 * token id, so every sum is checkable."""

    def __init__(self, tokenizer, thoughts):
        self.tok, self.thoughts, self.calls = tokenizer, thoughts, 0

    def sample(self, prompts, *, n, seeds):
        out = []
        for _ in prompts:
            z = self.thoughts[self.calls % len(self.thoughts)]
            self.calls += 1
            ids = self.tok.encode(z)
            out.append([Sample(ids, -0.5 * len(ids) - j, True) for j in range(n)])
        return out

    def score(self, sequences):
        return [np.concatenate([[0.0], -0.01 * np.asarray(s[1:], np.float64)]) for s in sequences]


def test_posterior_diagnostics_by_hand(tmp_path):
    from bolt_jax.data.formats import EOL
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.estep import sequences
    from bolt_jax.eval.toy import posterior_diagnostics
    tok = load_tokenizer(toy.build_tokenizer(tmp_path / "tok"))
    docs = [toy.generate_document(0, i, min_problems=1, max_problems=1) for i in range(3)]
    records = [d.raw_record() for d in docs]
    e = default_estep_config()
    e.update(num_samples=2, elbo_samples=[1, 2], split_mode="paragraph", units_per_chunk=1, random_chunking=False,
             include_all_prefix=True, max_new_tokens=30, max_tokens=256, max_prompt_len=256, chunks_per_batch=4)
    cfg = ChunkingConfig(split_mode="paragraph", units_per_chunk=1, random_chunking=False, include_all_prefix=True)
    chunks = document_chunks(records, range(3), cfg)
    assert len(chunks) == 6  # question and answer chunk per document
    # every chunk's sample is document 0's true thought: right for document 0's answer chunk only
    backend = FakeBackend(tok, [docs[0].problems[0].thought])
    out = posterior_diagnostics(backend, tok, chunks, e)
    assert out["answer_chunks"] == 3 and out["sample_correct"] == pytest.approx(1 / 3)
    assert out["chosen_correct"] == pytest.approx(1 / 3)
    # log q(true): the fake score of the true thought's tokens and <EoL> after the posterior prompt
    eol = tok.special_ids[EOL]
    expected_lq = []
    for _c, d in zip(chunks[1::2], docs):
        ids = tok.encode(d.problems[0].thought) + [eol]
        expected_lq.append(-0.01 * sum(ids))
    assert out["log_q_true"] == pytest.approx(np.mean(expected_lq))
    # the true thought part by part: " start S (, ordinal operation gives result)* ." by position, -0.01 * id
    by_part: dict[str, list[float]] = {}
    step = ["format", "format", "copy_op", "format", "result"]
    for d in docs:
        ids = tok.encode(d.problems[0].thought)
        names = ["format", "copy_start"] + step * ((len(ids) - 3) // len(step)) + ["format"]
        # a result of a new operation is a fact only thoughts teach
        results = [n for n, name in enumerate(names) if name == "result"]
        for n, (_, op) in zip(results, toy.question_clauses(d.problems[0].question)[1]):
            if op in toy.NEW_OPS:
                names[n] = "new_result"
        for i, name in zip(ids, names):
            by_part.setdefault(name, []).append(-0.01 * i)
    for name, values in by_part.items():
        for fmt in ("posterior", "prior"):
            assert out["thought_parts"][f"{fmt}/{name}"]["logp"] == pytest.approx(np.mean(values))
    answer_ids = [tok.encode(f" {d.problems[0].answer}")[0] for d in docs]
    assert out["thought_parts"]["prior/answer"]["logp"] == pytest.approx(np.mean([-0.01 * i for i in answer_ids]))
    # ELBO_n per token, by hand: -logsumexp(log w[:n]) + log n per chunk, summed per document over its suffix
    # tokens, then the mean over documents (the original's convention, spec 7.3)
    total = {n: [0.0] * 3 for n in (1, 2)}
    tokens = [0] * 3
    for c in chunks:
        z = docs[0].problems[0].thought
        j = sequences.joint_sequences(tok, c.prefix, [z, z], c.suffix, 256, "original")
        joint = -0.01 * sum(j.sequences[0][j.score_from:])
        n_z = len(tok.encode(z))
        log_w = np.array([joint - (-0.5 * n_z), joint - (-0.5 * n_z - 1)])
        for n in (1, 2):
            total[n][c.doc_index] += -(np.log(np.exp(log_w[:n]).sum()) - math.log(n))
        tokens[c.doc_index] += len(tok.encode(c.suffix))
    assert out["tokens"] == sum(tokens)
    for n in (1, 2):
        per_doc = [t / k for t, k in zip(total[n], tokens)]
        assert out[f"neg_elbo_{n}_per_token"] == pytest.approx(np.mean(per_doc))
        assert out[f"neg_elbo_{n}_per_token_se"] == pytest.approx(np.std(per_doc, ddof=1) / math.sqrt(3))


def test_estep_correctness_counts_only_answer_chunks():
    from bolt_jax.eval.toy import estep_correctness
    docs = [toy.generate_document(1, i) for i in range(4)]
    records = [d.raw_record() for d in docs]
    chunks = document_chunks(records, range(4), ChunkingConfig.estep(split_mode="paragraph", units_per_chunk=1,
                                                                     random_chunking=False))
    truth = {c.chunk_id: toy.ToyThoughtSource()(c.prefix, c.suffix) for c in chunks}
    rows = []
    for i, c in enumerate(chunks):
        right = truth[c.chunk_id] or ""
        rows.append({"chunk_id": c.chunk_id, "latents": [right, " start 0 ."], "chosen": i % 2, "ess": 1.5})
    out = estep_correctness(rows, chunks)
    answer_rows = [i for i, c in enumerate(chunks) if truth[c.chunk_id]]
    assert out["answer_chunks"] == len(answer_rows) == sum(len(d.problems) for d in docs)
    assert out["sample_correct"] == pytest.approx(0.5)
    assert out["chosen_correct"] == pytest.approx(np.mean([i % 2 == 0 for i in answer_rows]))


def test_report_checks_follow_the_figures():
    from bolt_jax.workflows.report import build_report, render_markdown
    models = {n: {"steps": 10, "tokens": 100} for n in ("base", "warmstart", "iter_1", "iter_2", "raw_token_match")}
    acc = {"base": 0.1, "warmstart": 0.3, "iter_1": 0.4, "iter_2": 0.6, "raw_token_match": 0.1}
    evaluations = {n: {"fewshot": {"accuracy": a, "accuracy_se": 0.02}} for n, a in acc.items()}
    for n, v in (("warmstart", 0.5), ("iter_1", 0.45), ("iter_2", 0.4)):
        evaluations[n]["elbo"] = {"neg_elbo_per_token": v, "neg_elbo_per_token_se": 0.01}
    for n in ("base", "raw_token_match"):
        evaluations[n]["nll"] = {"nll_per_token": 0.6, "nll_per_token_se": 0.01}
    esteps = {i: {"thought_correct": {"sample_correct": s, "sample_correct_se": 0.01, "chosen_correct": c,
                                      "chosen_correct_se": 0.01, "ess": 2.0, "answer_chunks": 50}}
              for i, (s, c) in {1: (0.2, 0.3), 2: (0.4, 0.6)}.items()}
    r = build_report(models=models, esteps=esteps, evaluations=evaluations, stage_seconds={"base": 1.0},
                     config={"bootstrap": {"elbo_samples": 4}}, toy=True)
    assert set(r) >= {"iterations", "models", "stage_seconds", "commit", "config", "checks"}
    assert r["iterations"][1] == pytest.approx({**r["iterations"][1], "iteration": 2, "chosen_correct": 0.6})
    assert r["models"]["warmstart"]["nll_per_token"] is None and r["models"]["base"]["neg_elbo_per_token"] is None
    assert all(c["passed"] for c in r["checks"]) and len(r["checks"]) == 6
    evaluations["iter_2"]["fewshot"]["accuracy"] = 0.25  # below warmstart + 0.15 and raw + 0.20
    r = build_report(models=models, esteps=esteps, evaluations=evaluations, stage_seconds={},
                     config={}, toy=True)
    failed = [c["name"] for c in r["checks"] if not c["passed"]]
    assert len(failed) == 2 and all("held-out accuracy" in f for f in failed)
    md = render_markdown(r, run_dir="x")
    assert "**no**" in md and "| iter_2 |" in md and "-ELBO" in md
