"""Few-shot generation evaluation: benchmarks, prompts, one generation call, grading, uncertainty, results.json.

    generate_fn = sampler_generate_fn(model, tokenizer, mesh)     # the JAX sampler, or any fn with this signature
    out = evaluate_fewshot(examples, "gsm8k_cot", generate_fn, tokenizer=tok, num_samples=1)

The variant (bolt_jax.eval.prompts.VARIANTS) decides the exemplars, their order, the delimiters, the stop and banned
strings and, unless the caller overrides them, the generation and prompt lengths; nothing here is per variant.
Every accuracy carries a bootstrap standard error over examples; with several samples per prompt, maj@k and
pass@k are reported too. Prompt shortening is counted in the results.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bolt_jax.eval import grading, prompts
from bolt_jax.runtime.atomic import atomic_write_text


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str  # the gold final answer (GSM8K: a number; MATH: the final answer)
    solution: str = ""  # MATH: the full reference solution (what math-verify parses)


def _rows(path: str):
    """Records of a JSONL or Parquet file, or of a TFDS source (tfds:NAME[:SPLIT], tfds_dir:PATH[:SPLIT])."""
    from bolt_jax.data.readers import _decode, is_tfds, tfds_source
    if is_tfds(path):
        src = tfds_source(path)
        for i in range(len(src)):
            yield _decode(src[i])
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq
        yield from pq.read_table(path).to_pylist()
    else:
        for line in open(path):
            if line.strip():
                yield json.loads(line)


def read_gsm8k(path: str, limit: int = 0) -> list[Example]:
    """GSM8K ({question, answer} with '#### N' last): the official test.jsonl, a Parquet file, or
    tfds:gsm8k:test (TFDS, where the dataset is available)."""
    out = []
    for i, r in enumerate(_rows(path)):
        out.append(Example(str(r.get("id", i)), r["question"], grading.gsm8k_gold(r["answer"]), r["answer"]))
        if limit and len(out) >= limit:
            break
    return out


def read_math(path: str, limit: int = 0) -> list[Example]:
    """MATH ({problem, solution}) from JSONL, Parquet or a TFDS source."""
    rows = list(_rows(path))
    out = []
    for i, r in enumerate(rows[: limit or None]):
        final = grading.math_final_answer(r["solution"]) or ""
        out.append(Example(str(r.get("id", i)), r["problem"], final, r["solution"]))
    return out


# ------------------------------------------------------------------------------------------------ grading
def grade(variant: prompts.Variant, text: str, ex: Example) -> dict[str, Any]:
    """One output graded as the variant's task did, after cutting it at the variant's stop strings (a no-op when the
    engine honoured them). GSM8K: strict-match and flexible-extract (plus the latent-* filters for the paper's latent
    variants); MATH: math-verify against the reference solution, on the whole output (compact latent variants: on
    what follows <EoL>)."""
    text = grading.cut_at_stop(text, variant.stop_strings)
    if variant.benchmark == "gsm8k":
        return _grade_gsm8k(variant, text, ex)
    body = grading.after_latent(text) if variant.grade_after_latent else text
    correct = grading.math_equivalent(body, ex.solution or f"${ex.answer}$")
    return {"answer": grading.math_final_answer(body), "correct": correct}


def _grade_gsm8k(variant: prompts.Variant, text: str, ex: Example) -> dict[str, Any]:
    after = variant.grade_after_latent
    strict, flexible = grading.gsm8k_strict(text, latent=after), grading.gsm8k_flexible(text, latent=after)
    gold = grading.normalize_number(ex.answer)
    out = {"strict": strict, "flexible": flexible, "strict_correct": strict == gold,
           "flexible_correct": flexible == gold, "answer": flexible}
    if variant.latent and not after:
        latent_strict, latent_flexible = grading.gsm8k_latent_strict(text), grading.gsm8k_latent_flexible(text)
        out.update(latent_strict=latent_strict, latent_flexible=latent_flexible,
                   latent_strict_correct=latent_strict == gold, latent_flexible_correct=latent_flexible == gold)
    return out


def bootstrap_se(values: Sequence[float], iters: int = 1000, seed: int = 1234) -> float:
    """Standard error of the mean by resampling examples (seeded)."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float("nan")
    idx = np.random.default_rng(seed).integers(0, len(v), (iters, len(v)))
    return float(v[idx].mean(axis=1).std(ddof=1))


def bootstrap_ratio_se(numerators: Sequence[float], denominators: Sequence[float], iters: int = 1000,
                       seed: int = 1234) -> float:
    """Standard error of sum(numerators) / sum(denominators) (e.g. nats per token over documents) by resampling
    the units (documents or chunks) with their own denominators."""
    num, den = np.asarray(numerators, np.float64), np.asarray(denominators, np.float64)
    if len(num) < 2:
        return float("nan")
    idx = np.random.default_rng(seed).integers(0, len(num), (iters, len(num)))
    return float((num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-12)).std(ddof=1))


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error over trials or seeds."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


GenerateFn = Callable[..., list[list[str]]]


class _PromptCounter:
    """The sampler's finished-request counts (`on_done(k)`, k samples) as whole prompts for a per-prompt progress
    display: prompt-equivalents done = requests // samples per prompt, reported as increments that never exceed the
    number of prompts. `finish` reports the rest, so the increments sum to the prompts even when the generate_fn
    never calls back (a fake, an API client)."""

    def __init__(self, on_done: Callable[[int], None], samples_per_prompt: int, num_prompts: int):
        self.on_done, self.per_prompt, self.num_prompts = on_done, max(1, samples_per_prompt), num_prompts
        self.requests = self.reported = 0

    def __call__(self, finished_requests: int) -> None:
        self.requests += finished_requests
        self._report(min(self.requests // self.per_prompt, self.num_prompts))

    def finish(self) -> None:
        self._report(self.num_prompts)

    def _report(self, prompts_done: int) -> None:
        if prompts_done > self.reported:
            self.on_done(prompts_done - self.reported)
            self.reported = prompts_done


def evaluate_fewshot(examples: Sequence[Example], variant_name: str, generate_fn: GenerateFn, *, tokenizer,
                     exemplars: Sequence[dict] | None = None, num_samples: int = 1, max_new_tokens: int | None = None,
                     temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                     max_prompt_tokens: int | None = None, truncation: str | None = None,
                     output_path: str = "", on_done: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Prompts (the variant's exemplars, order and delimiters), one generation call with the variant's stops and
    bans, grading, metrics. max_new_tokens, max_prompt_tokens and truncation left at None (or 0 / "") are the
    variant's (the paper's variants: 1024 new tokens, 1024 prompt tokens, left-truncated).

    `on_done(k)`: k more prompts were generated, for a progress display that moves while the one generation call
    runs. It is passed on to `generate_fn` (as `on_done`, counting samples) only when given; the increments sum to
    len(examples) by the time this returns."""
    variant = prompts.VARIANTS[variant_name]
    max_new_tokens = max_new_tokens or variant.max_new_tokens
    max_prompt_tokens = max_prompt_tokens or variant.max_prompt_tokens
    truncation = truncation or variant.truncation
    shots = list(exemplars) if exemplars is not None else prompts.variant_exemplars(variant)
    prompt_ids, shortened = prompts.fit_prompts(variant, [e.question for e in examples], shots, tokenizer,
                                                max_prompt_tokens, truncation)
    counter = _PromptCounter(on_done, num_samples, len(prompt_ids)) if on_done is not None else None
    outputs = generate_fn(prompt_ids, n=num_samples, max_new_tokens=max_new_tokens, temperature=temperature,
                          top_p=top_p, top_k=top_k, stop_strings=variant.stop_strings,
                          banned_token_strings=variant.banned, **({"on_done": counter} if counter is not None else {}))
    if counter is not None:
        counter.finish()
    records = [_record(variant, ex, outs, num_samples) for ex, outs in zip(examples, outputs)]
    metrics = {"variant": variant_name, "examples": len(examples), "samples_per_example": num_samples,
               **_accuracies(variant, records, num_samples), "prompts_shortened": shortened,
               "max_prompt_tokens": max_prompt_tokens, "truncation": truncation, "max_new_tokens": max_new_tokens,
               "exemplar_order": variant.order, "fewshot_seed": variant.fewshot_seed,
               "stop_strings": list(variant.stop_strings), "banned": list(variant.banned)}
    result = {"metrics": metrics, "records": records}
    if output_path:
        atomic_write_text(output_path, json.dumps(result, indent=1, default=str))
    return result


# the per-output correctness keys averaged into each reported accuracy (the first is `accuracy`, the one the
# original's plots read: flexible-extract for GSM8K, math-verify exact_match for MATH)
_GSM8K_KEYS = {"accuracy": "flexible_correct", "strict_accuracy": "strict_correct"}
_GSM8K_LATENT_KEYS = {"latent_strict_accuracy": "latent_strict_correct",
                      "latent_flexible_accuracy": "latent_flexible_correct"}


def _keys(variant: prompts.Variant) -> dict[str, str]:
    if variant.benchmark != "gsm8k":
        return {"accuracy": "correct"}
    return {**_GSM8K_KEYS, **(_GSM8K_LATENT_KEYS if variant.latent and not variant.grade_after_latent else {})}


def _record(variant: prompts.Variant, ex: Example, outs: Sequence[str], num_samples: int) -> dict[str, Any]:
    """One example's outputs, their grades, the mean correctness under each metric and, with several samples,
    maj@k and pass@k."""
    graded = [grade(variant, o, ex) for o in outs]
    keys = _keys(variant)
    rec = {"id": ex.id, "gold": ex.answer, "outputs": list(outs), "graded": graded}
    for metric, key in keys.items():
        rec[metric.replace("accuracy", "correct")] = float(np.mean([g[key] for g in graded]))
    if num_samples > 1:
        key = keys["accuracy"]
        maj = grading.majority([g["answer"] for g in graded])
        rec["maj_correct"] = float(any(g["answer"] == maj and g[key] for g in graded)) if maj else 0.0
        c = sum(bool(g[key]) for g in graded)
        rec["pass_at"] = {k: grading.pass_at_k(num_samples, c, k) for k in _log_ks(num_samples)}
    return rec


def _accuracies(variant: prompts.Variant, records: Sequence[dict], num_samples: int) -> dict[str, float]:
    """Every accuracy with its bootstrap SE over examples, and maj@k / pass@k with several samples."""
    out: dict[str, float] = {}
    for metric in _keys(variant):
        scores = [r[metric.replace("accuracy", "correct")] for r in records]
        out[metric] = float(np.mean(scores)) if scores else float("nan")
        out[f"{metric}_se"] = bootstrap_se(scores)
    if num_samples > 1:
        maj = [r["maj_correct"] for r in records]
        out.update({f"maj@{num_samples}": float(np.mean(maj)), f"maj@{num_samples}_se": bootstrap_se(maj)})
        for k in _log_ks(num_samples):
            out[f"pass@{k}"] = float(np.mean([r["pass_at"][k] for r in records]))
    return out


def _log_ks(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def sampler_generate_fn(model, tokenizer, mesh=None, seed: int = 1234, scheduler: str = "continuous",
                        decode_slots: int | None = None) -> GenerateFn:
    """The JAX sampler as a generate_fn (greedy when temperature is 0), with either scheduler; `on_done` goes to the
    sampler, which reports finished samples as they come."""
    from bolt_jax.sampling import generate

    def fn(prompt_ids, *, n, max_new_tokens, temperature, top_p, top_k, stop_strings, banned_token_strings,
           on_done=None):
        banned = [tokenizer.hf.convert_tokens_to_ids(t) for t in banned_token_strings]
        stop_ids = [tokenizer.eos_id]
        r = generate(model, prompt_ids, n=n, max_new_tokens=max_new_tokens, temperature=max(temperature, 1e-6),
                     top_p=top_p, top_k=top_k, greedy=temperature == 0.0, stop_token_ids=stop_ids,
                     stop_strings=list(stop_strings), banned_token_ids=banned, seed=seed, mesh=mesh,
                     tokenizer=tokenizer.hf, max_prompt_len=max(len(p) for p in prompt_ids), scheduler=scheduler,
                     decode_slots=decode_slots, on_done=on_done)
        return [r.texts[i * n:(i + 1) * n] for i in range(len(prompt_ids))]

    return fn
