"""Few-shot prompts of the evaluation variants (spec 7.2), with our own exemplar files.

Variants: `gsm8k_cot` (Q:/A:, "The answer is N."), `latent_gsm8k_cot` (the prompt ends `A:<SoL><PRIOR>`, the
exemplar reasoning sits inside the thought and the answer follows `<EoL>`), `math_cot` and `latent_math_cot`
("Final Answer: The final answer is $X$. I hope it is correct."). The toy world has its own prompt, in its
training format (bolt_jax.eval.toy).
Plain variants ban the four special tokens; latent variants stop at `<SoL>`.

Prompts longer than `max_prompt_tokens` lose their earliest exemplars (or are left-truncated, a setting); the number
of prompts affected is always reported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from bolt_jax.data.formats import EOL, POSTERIOR, PRIOR, SOL

SPECIAL = (SOL, EOL, PRIOR, POSTERIOR)
EXEMPLAR_DIR = os.path.join(os.path.dirname(__file__), "exemplars")


@dataclass(frozen=True)
class Variant:
    name: str
    benchmark: str  # gsm8k | math
    latent: bool
    delimiter: str
    stop_strings: tuple[str, ...]
    banned: tuple[str, ...]


VARIANTS = {
    "gsm8k_cot": Variant("gsm8k_cot", "gsm8k", False, "\n\n", ("Q:", "</s>", "\n\n\n"), SPECIAL),
    "latent_gsm8k_cot": Variant("latent_gsm8k_cot", "gsm8k", True, "\n\n", ("Q:", "</s>", SOL), ()),
    "math_cot": Variant("math_cot", "math", False, "\n\n", ("Problem:", "</s>"), SPECIAL),
    "latent_math_cot": Variant("latent_math_cot", "math", True, "\n\n", ("Problem:", "</s>", SOL), ()),
}


def load_exemplars(benchmark: str, path: str = "") -> list[dict]:
    """Our exemplar file for the benchmark (GSM8K: 8 solutions from the GSM8K train set, MIT; MATH: 4 of our own),
    or a user's JSONL with question/problem, reasoning, answer."""
    path = path or os.path.join(EXEMPLAR_DIR, f"{benchmark}_cot.jsonl")
    return [json.loads(line) for line in open(path) if line.strip()]


def _question(ex: dict) -> str:
    return ex.get("question") or ex.get("problem") or ""


def format_shot(variant: Variant, question: str, reasoning: str | None = None, answer: str | None = None) -> str:
    """One exemplar (with reasoning and answer) or the final query (without)."""
    if variant.benchmark == "gsm8k":
        head = f"Q: {question}\nA:"
        if reasoning is None:
            return head + (SOL + PRIOR if variant.latent else "")
        if variant.latent:
            return f"{head}{SOL}{PRIOR}{reasoning}{EOL} The answer is {answer}."
        return f"{head} {reasoning} The answer is {answer}."
    final = f"Final Answer: The final answer is ${answer}$. I hope it is correct."
    if variant.latent:
        head = f"Problem:\n{question}\n"
        if reasoning is None:
            return head + SOL + PRIOR
        return f"{head}{SOL}{PRIOR}{reasoning}\n{final.split(': ', 1)[1]}\n{EOL} {final}"
    head = f"Problem:\n{question}\n\nSolution:"
    if reasoning is None:
        return head
    return f"{head} {reasoning}\n{final}"


def build_prompt(variant: Variant, question: str, exemplars: Sequence[dict], num_shots: int | None = None) -> str:
    shots = list(exemplars)[: num_shots if num_shots is not None else len(exemplars)]
    parts = [format_shot(variant, _question(e), e["reasoning"], e["answer"]) for e in shots]
    parts.append(format_shot(variant, question))
    return variant.delimiter.join(parts)


def fit_prompts(variant: Variant, questions: Sequence[str], exemplars: Sequence[dict], tokenizer,
                max_prompt_tokens: int, mode: str = "drop_exemplars") -> tuple[list[list[int]], int]:
    """Token ids of every prompt within the limit, and how many prompts had to be shortened (never silent).

    drop_exemplars: remove the earliest exemplars until the prompt fits (the question itself is kept whole);
    left_truncate: keep the last tokens, as the original's vLLM truncation did."""
    if mode not in ("drop_exemplars", "left_truncate"):
        raise ValueError(f"prompt truncation mode {mode!r}; choose drop_exemplars or left_truncate")
    out, shortened = [], 0
    for q in questions:
        shots = list(exemplars)
        ids = [tokenizer.bos_id] + tokenizer.encode(build_prompt(variant, q, shots))
        if len(ids) > max_prompt_tokens:
            shortened += 1
            if mode == "drop_exemplars":
                while shots and len(ids) > max_prompt_tokens:
                    shots = shots[1:]
                    ids = [tokenizer.bos_id] + tokenizer.encode(build_prompt(variant, q, shots))
            ids = ids[-max_prompt_tokens:]
        out.append(ids)
    return out, shortened
