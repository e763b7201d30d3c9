"""Finetune evaluation's examples (spec 7.4): `prompt <SoL><PRIOR> completion` from GSM8K or MATH, where the
completion holds the reasoning, `<EoL>`, then the answer; for raw-baseline models the delimiter is `<SoL>` alone and
`<EoL>` is removed from the completion. `is_correct` grades a sampled completion against its example."""

from __future__ import annotations

import json
import re

from bolt_jax.data.formats import EOL, PRIOR, SOL
from bolt_jax.eval import grading
from bolt_jax.eval.fewshot import _rows


def gsm8k_sft_examples(path: str, raw_baseline: bool, limit: int = 0) -> list[dict[str, str]]:
    """(prompt, completion, answer) from GSM8K: the worked solution (calculator notes removed) is the thought."""
    out = []
    for line in open(path):
        if not line.strip():
            continue
        r = json.loads(line)
        solution, answer = r["answer"].split("####")
        reasoning = re.sub(r"<<[^>]*>>", "", solution).strip()
        answer = answer.strip()
        completion = f"{reasoning}{EOL} The answer is {answer}."
        delimiter = SOL + PRIOR
        if raw_baseline:
            completion, delimiter = completion.replace(EOL, ""), SOL
        out.append({"prompt": f"Question: {r['question']}\nAnswer:{delimiter}", "completion": completion,
                    "answer": grading.gsm8k_gold(r["answer"])})
        if limit and len(out) >= limit:
            break
    return out


def math_sft_examples(path: str, raw_baseline: bool, limit: int = 0) -> list[dict[str, str]]:
    """(prompt, completion, answer) from MATH: the reference solution is the thought, its final answer follows."""
    out = []
    for r in _rows(path):
        final = grading.math_final_answer(r["solution"]) or ""
        completion = f"{r['solution'].strip()}{EOL} Final Answer: The final answer is ${final}$."
        delimiter = SOL + PRIOR
        if raw_baseline:
            completion, delimiter = completion.replace(EOL, ""), SOL
        out.append({"prompt": f"Problem:\n{r['problem']}\n{delimiter}", "completion": completion,
                    "answer": final, "solution": r["solution"]})
        if limit and len(out) >= limit:
            break
    return out


def sft_examples(benchmark: str, path: str, raw_baseline: bool, limit: int = 0) -> list[dict[str, str]]:
    if benchmark == "gsm8k":
        return gsm8k_sft_examples(path, raw_baseline, limit)
    if benchmark == "math":
        return math_sft_examples(path, raw_baseline, limit)
    raise ValueError(f"finetune benchmark {benchmark!r}; choose gsm8k or math")


def is_correct(benchmark: str, text: str, example: dict[str, str], raw_baseline: bool) -> bool:
    if benchmark == "gsm8k":
        return grading.gsm8k_flexible(text, latent=not raw_baseline) == example["answer"]
    return grading.math_equivalent(grading.after_latent(text), example["solution"])
