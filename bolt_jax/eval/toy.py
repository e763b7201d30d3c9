"""Evaluation in the toy world (bolt_jax.data.toy), where every thought and answer can be checked.

- `heldout_accuracy`: greedy accuracy on held-out problems (optionally with exemplars), the prompt in the training
  format itself
  (`toy.evaluation_prompt`): latent models write a thought, <EoL>, then the answer; raw models the answer.
- `estep_correctness`: how often the E-step's K posterior samples, and its chosen (resampled) thought, are the true
  chain of steps, from the rows of an E-step store.
- `posterior_diagnostics`: for one model on held-out chunks: the same correctness figures, the ESS, the log q of
  the true thought and how often the true thought, added as a (K+1)-th candidate, gets the largest importance
  weight; the true thought's log-probability part by part (copying the question, each fact, the answer: which
  skill a model lacks); plus ELBO_n per token from the same samples. The weight math is bolt_jax.estep.weights.

Accuracies carry a bootstrap standard error over problems (bolt_jax.eval.fewshot.bootstrap_se).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bolt_jax.data import toy
from bolt_jax.eval.fewshot import bootstrap_se


def heldout_problems(records: Sequence[dict], limit: int) -> list[tuple[str, int]]:
    """(question, answer) of the problems in raw toy records, in order, at most `limit`."""
    out = []
    for r in records:
        for q, a in zip(toy.QUESTION_RE.findall(r["text"]), r["answers"]):
            out.append((q, int(a)))
            if len(out) >= limit:
                return out
    return out


def heldout_accuracy(model, tokenizer, problems: Sequence[tuple[str, int]], exemplars: Sequence[toy.ToyProblem], *,
                     latent: bool, mesh=None, max_new_tokens: int = 32) -> dict[str, Any]:
    """Greedy accuracy on (question, answer) pairs; the stated answer is the first "The answer is N ."."""
    from bolt_jax.sampling import generate
    prompts = [[tokenizer.bos_id] + tokenizer.encode(toy.evaluation_prompt(q, exemplars, latent))
               for q, _ in problems]
    r = generate(model, prompts, n=1, max_new_tokens=max_new_tokens, greedy=True, temperature=1.0,
                 stop_token_ids=[tokenizer.eos_id], mesh=mesh, max_prompt_len=max(len(p) for p in prompts))
    texts = [tokenizer.decode(t) for t in r.tokens]
    correct = [float(toy.evaluation_answer(t) == a) for t, (_, a) in zip(texts, problems)]
    return {"accuracy": float(np.mean(correct)), "accuracy_se": bootstrap_se(correct), "problems": len(problems),
            "latent_prompt": latent, "examples": [{"question": q, "answer": a, "output": t}
                                                  for (q, a), t in zip(problems[:5], texts[:5])]}


def true_thoughts(chunks) -> dict[str, str]:
    """chunk_id -> the true thought of each E-step chunk (bolt_jax.estep.run.Chunk) of toy text."""
    source = toy.ToyThoughtSource()
    return {c.chunk_id: source(c.prefix, c.suffix) for c in chunks}


def correctness(rows: Sequence[dict], truth: dict[str, str]) -> dict[str, float]:
    """Mean correctness of the K samples and of the chosen thought over the chunks that state an answer."""
    sample, chosen = [], []
    for row in rows:
        true = truth.get(row["chunk_id"], "")
        if not true:
            continue  # the first question of a document: nothing to solve
        ok = [toy.thought_is_correct(z, true) for z in row["latents"]]
        sample.append(float(np.mean(ok)))
        chosen.append(float(ok[row["chosen"]]))
    return {"sample_correct": float(np.mean(sample)) if sample else math.nan,
            "sample_correct_se": bootstrap_se(sample),
            "chosen_correct": float(np.mean(chosen)) if chosen else math.nan,
            "chosen_correct_se": bootstrap_se(chosen), "answer_chunks": len(chosen)}


def estep_correctness(store_rows: Sequence[dict], chunks) -> dict[str, float]:
    """Correctness of an E-step on a toy corpus, and its mean ESS over the chunks that state an answer."""
    truth = true_thoughts(chunks)
    out = correctness(store_rows, truth)
    ess = [r["ess"] for r in store_rows if truth.get(r["chunk_id"])]
    out["ess"] = float(np.mean(ess)) if ess else math.nan
    return out


def posterior_diagnostics(backend, tokenizer, chunks, e) -> dict[str, Any]:
    """One model's posterior on held-out toy chunks (bolt_jax.estep.run.Chunk), through the E-step's own code.

    For every chunk: K samples from q(z | prefix, x), scored under the joint (estep.run.process_chunks); the true
    thought scored the same way as a (K+1)-th candidate: log q(true) from the posterior prompt, log p(true, x) from
    its joint. Returns means over the chunks that state an answer (with bootstrap SEs): sample_correct,
    chosen_correct, true_top, ess, log_q_true (nats per thought); and ELBO_n per token over every chunk (the IWAE
    bound of the K samples, summed, divided by the text tokens scored: spec 7.3's normalisation)."""
    from bolt_jax.data.formats import EOL
    from bolt_jax.estep import sequences
    from bolt_jax.estep.run import process_chunks
    from bolt_jax.estep.weights import chunk_rng, true_thought_diagnostics

    truth = true_thoughts(chunks)
    rows = process_chunks(chunks, backend, tokenizer, e)
    solved = [(c, r) for c, r in zip(chunks, rows) if truth[c.chunk_id]]
    q_seqs, q_from, joints = [], [], []
    for c, _ in solved:
        prompt = sequences.posterior_prompt_tokens(tokenizer, c.prefix, c.suffix, e.max_prompt_len).tokens
        q_seqs.append(prompt + tokenizer.encode(truth[c.chunk_id]) + [tokenizer.special_ids[EOL]])
        q_from.append(len(prompt))
        joints.append(sequences.joint_sequences(tokenizer, c.prefix, [truth[c.chunk_id]], c.suffix, e.max_tokens,
                                                e.accounting))
    scores = backend.score(q_seqs + [j.sequences[0] for j in joints])
    per_chunk, log_q_true = [], []
    parts: dict[str, list[float]] = {}
    for n, ((c, row), start, j) in enumerate(zip(solved, q_from, joints)):
        lq = sequences.span_sum(scores[n], start)
        lp = sequences.span_sum(scores[len(solved) + n], j.score_from)
        prior_start = _prior_thought_start(j, tokenizer)
        for fmt, seq, s, first in (("posterior", q_seqs[n], scores[n], start),
                                   ("prior", j.sequences[0], scores[len(solved) + n], prior_start)):
            _add_part_logprobs(parts, fmt, tokenizer, seq, s, first)
        ok = [toy.thought_is_correct(z, truth[c.chunk_id]) for z in row["latents"]]
        per_chunk.append(true_thought_diagnostics(row["log_weight"], lp - lq, ok,
                                                  chunk_rng(e.seed, c.doc_index, c.index)))
        log_q_true.append(lq)
    out: dict[str, Any] = {"answer_chunks": len(per_chunk), "chunks": len(rows)}
    for key in ("sample_correct", "chosen_correct", "true_top", "ess"):
        values = [d[key] for d in per_chunk]
        out[key] = float(np.mean(values)) if values else math.nan
        out[f"{key}_se"] = bootstrap_se(values)
    out["thought_parts"] = {key: {"logp": float(np.mean(v)), "logp_se": bootstrap_se(v), "tokens": len(v)}
                            for key, v in sorted(parts.items())}
    out["log_q_true"] = float(np.mean(log_q_true)) if log_q_true else math.nan
    out["log_q_true_se"] = bootstrap_se(log_q_true)
    from bolt_jax.eval.validation import per_document_chunks, per_document_mean
    for n in e.elbo_samples:
        if n <= e.num_samples:  # per document, then the mean over documents (bolt_jax.eval.validation)
            elbo, se = per_document_mean(*per_document_chunks(rows, f"elbo_{n}"))
            out[f"neg_elbo_{n}_per_token"], out[f"neg_elbo_{n}_per_token_se"] = -elbo, se
    out["tokens"] = sum(r["suffix_tokens"] - r["num_suffix_token_truncated"] for r in rows)
    return out


def _prior_thought_start(joint, tokenizer) -> int:
    """Index of the first thought token of a joint sequence (right after its last <PRIOR>)."""
    from bolt_jax.data.formats import PRIOR
    seq = list(joint.sequences[0])
    return len(seq) - seq[::-1].index(tokenizer.special_ids[PRIOR])


def _add_part_logprobs(parts: dict[str, list[float]], fmt: str, tokenizer, seq, scores, first: int) -> None:
    """Per-token log p of the true thought's parts (toy.thought_parts) from `first` up to <EoL>, and, after it in
    the prior format, of the stated answer's number: what each skill of the thought costs the model."""
    from bolt_jax.data.formats import EOL
    eol = tokenizer.special_ids[EOL]
    end = list(seq).index(eol, first)
    words = [tokenizer.decode([t]) for t in seq[first:end]]
    for offset, part in enumerate(toy.thought_parts(words)):
        parts.setdefault(f"{fmt}/{part}", []).append(float(scores[first + offset]))
    if fmt == "prior":
        after = [tokenizer.decode([t]).strip() for t in seq[end + 1:]]
        for offset, w in enumerate(after):
            if w.isdigit():  # "The answer is N ." -> N, predicted from the thought
                parts.setdefault("prior/answer", []).append(float(scores[end + 1 + offset]))
                break
