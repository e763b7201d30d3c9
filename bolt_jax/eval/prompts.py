"""Few-shot prompts of the evaluation variants (spec 7.2), with our own exemplar files.

Every variant is data (`Variant`): the query and target templates, the delimiters, the exemplar file, the exemplar
order, the generation and prompt lengths, the stop strings and the banned strings; `fewshot.py` reads them and has no
per-variant code. A prompt is lm-eval's: for each exemplar `query + target_delimiter + target + delimiter`, then the
query of the question.

The paper's variants, by the original's task names (configs/eval/task_configs of the original):
  gsm8k_cot_alt                  Q:/A:, "The answer is N.", 8 shots in random order, delimiter
                                 "\\n\\n\\n\\n##Problem\\n"
  gsm8k_cot_synthetic_alt        "Question: {q}\\nFinal Answer:", long solutions ending "Therefore, the final answer
                                 is N. I hope it is correct." (the variant the plots read)
  latent_gsm8k_cot_alt           the prompt ends `A:<SoL><PRIOR>`; the reasoning sits in the thought, then
                                 `<EoL> The answer is N.`
  latent_gsm8k_cot_synthetic_alt the thought ends "Therefore, the answer is N.", then `<EoL> The final answer is N.
                                 I hope it is correct.`
  hendrycks_math_cot[_synthetic] "Problem:\\n{p}\\n\\nSolution:", 4 shots in file order, delimiter "\\n\\n",
                                 "Final Answer: The final answer is $X$. I hope it is correct."
  latent_hendrycks_math_cot[_synthetic]
                                 "Problem:\\n{p}\\n<SoL><PRIOR>" (no "Solution:"); exemplars rewritten as the
                                 original's convert_to_latent_format, so the final answer also sits in the thought:
                                 "...\\nThe final answer is $X$\\n<EoL> Final Answer: The final answer is $X$. I..."
GSM8K shots are drawn as lm-eval's `default` sampler did: one `random.Random(1234)` per task and, for the i-th
evaluated question, its i-th `rng.sample(exemplars, 8)` (a new order per question). MATH uses `first_n`.
Plain variants ban the four special tokens; latent ones stop at `<SoL>`. Generation: greedy, 1024 new tokens; the
original's prompt limit was 1024 tokens, left-truncated.

The compact variants of this port (`gsm8k_cot`, `latent_gsm8k_cot`, `math_cot`, `latent_math_cot`: delimiter
"\\n\\n", exemplars in file order, graded after the thought) are kept for existing configs.
The exemplar texts are our own: GSM8K train-set solutions (MIT) and long step-by-step rewrites of the same problems
written for this port; MATH problems and solutions written for this port. The toy world has its own prompt, in its
training format (bolt_jax.eval.toy).

Prompts longer than `max_prompt_tokens` lose their earliest exemplars (or are left-truncated, as the original); the
number of prompts affected is always reported.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from bolt_jax.data.formats import EOL, POSTERIOR, PRIOR, SOL

SPECIAL = (SOL, EOL, PRIOR, POSTERIOR)
EXEMPLAR_DIR = os.path.join(os.path.dirname(__file__), "exemplars")
LATENT_PREFIX = SOL + PRIOR
GSM8K_DELIMITER = "\n\n\n\n##Problem\n"  # the original's fewshot_delimiter for GSM8K (and MMLU)
FEWSHOT_SEED = 1234  # lm-eval's fewshot_random_seed in the original's eval config
MATH_FINAL = "Final Answer: The final answer is ${answer}$. I hope it is correct."


@dataclass(frozen=True)
class Variant:
    """One few-shot task variant; every field is what the original's task YAML set (or this port's compact one).

    Templates are str.format strings with {question}, {reasoning} and {answer} (values are inserted verbatim)."""
    name: str
    benchmark: str  # gsm8k | math
    latent: bool
    delimiter: str  # between two shots (lm-eval's fewshot_delimiter)
    stop_strings: tuple[str, ...]
    banned: tuple[str, ...]
    query: str = "Q: {question}\nA:"
    target: str = "{reasoning} The answer is {answer}."
    target_delimiter: str = " "  # between an exemplar's query and its target ("" for latent variants)
    exemplars: str = "gsm8k_cot.jsonl"  # file under EXEMPLAR_DIR
    order: str = "first_n"  # first_n: file order | random: lm-eval's default sampler (see shot_orders)
    fewshot_seed: int = FEWSHOT_SEED
    num_fewshot: int | None = None  # None: every exemplar of the file
    max_new_tokens: int = 256
    max_prompt_tokens: int = 1024
    truncation: str = "drop_exemplars"  # or left_truncate (the original's)
    grade_after_latent: bool = False  # compact latent variants grade only what follows <EoL>; the original's all


def _compact() -> dict[str, Variant]:
    """This port's first variants (kept for existing configs): "\\n\\n" between shots, file order, 256 new tokens."""
    return {v.name: v for v in (
        Variant("gsm8k_cot", "gsm8k", False, "\n\n", ("Q:", "</s>", "\n\n\n"), SPECIAL),
        Variant("latent_gsm8k_cot", "gsm8k", True, "\n\n", ("Q:", "</s>", SOL), (),
                query="Q: {question}\nA:" + LATENT_PREFIX, target="{reasoning}" + EOL + " The answer is {answer}.",
                target_delimiter="", grade_after_latent=True),
        Variant("math_cot", "math", False, "\n\n", ("Problem:", "</s>"), SPECIAL,
                query="Problem:\n{question}\n\nSolution:", target="{reasoning}\n" + MATH_FINAL,
                exemplars="math_cot.jsonl"),
        Variant("latent_math_cot", "math", True, "\n\n", ("Problem:", "</s>", SOL), (),
                query="Problem:\n{question}\n" + LATENT_PREFIX,
                target="{reasoning}\nThe final answer is ${answer}$. I hope it is correct.\n" + EOL + " " + MATH_FINAL,
                target_delimiter="", exemplars="math_cot.jsonl", grade_after_latent=True),
    )}


def _gsm8k_paper() -> dict[str, Variant]:
    """The original's four GSM8K tasks: 8 shots in random order (seed 1234), its delimiter, stops and bans."""
    common = dict(order="random", num_fewshot=8, max_new_tokens=1024, max_prompt_tokens=1024,
                  truncation="left_truncate")
    plain_stops, synthetic_stops = ("Q:", "</s>", "<|im_end|>"), ("Q:", "Question:", "</s>", "<|im_end|>")
    synthetic_query = "Question: {question}\nFinal Answer:"
    return {v.name: v for v in (
        Variant("gsm8k_cot_alt", "gsm8k", False, GSM8K_DELIMITER, plain_stops, SPECIAL, **common),
        Variant("latent_gsm8k_cot_alt", "gsm8k", True, GSM8K_DELIMITER, plain_stops + (SOL,), (),
                query="Q: {question}\nA:" + LATENT_PREFIX, target="{reasoning}" + EOL + " The answer is {answer}.",
                target_delimiter="", **common),
        Variant("gsm8k_cot_synthetic_alt", "gsm8k", False, GSM8K_DELIMITER, synthetic_stops + (EOL,), SPECIAL,
                query=synthetic_query,
                target="{reasoning} Therefore, the final answer is {answer}. I hope it is correct.",
                exemplars="gsm8k_cot_synthetic.jsonl", **common),
        Variant("latent_gsm8k_cot_synthetic_alt", "gsm8k", True, GSM8K_DELIMITER, synthetic_stops + (SOL,), (),
                query=synthetic_query + LATENT_PREFIX,
                target="{reasoning} Therefore, the answer is {answer}." + EOL
                       + " The final answer is {answer}. I hope it is correct.",
                target_delimiter="", exemplars="gsm8k_cot_synthetic.jsonl", **common),
    )}


def _math_paper() -> dict[str, Variant]:
    """The original's four MATH tasks (each a group of the 7 subjects): 4 shots in file order, lm-eval's "\\n\\n"."""
    common = dict(num_fewshot=4, max_new_tokens=1024, max_prompt_tokens=1024, truncation="left_truncate")
    out = {}
    for suffix, file in (("", "math_cot.jsonl"), ("_synthetic", "math_cot_synthetic.jsonl")):
        name = "hendrycks_math_cot" + suffix
        out[name] = Variant(name, "math", False, "\n\n", ("Problem:",), SPECIAL,
                            query="Problem:\n{question}\n\nSolution:", target="{reasoning}\n" + MATH_FINAL,
                            exemplars=file, **common)
        # convert_to_latent_format: "\nFinal Answer:" -> "\nThe final answer is $X$\n<EoL> Final Answer:"
        out["latent_" + name] = Variant(
            "latent_" + name, "math", True, "\n\n", ("Problem:", SOL), (),
            query="Problem:\n{question}\n" + LATENT_PREFIX,
            target="{reasoning}\nThe final answer is ${answer}$\n" + EOL + " " + MATH_FINAL,
            target_delimiter="", exemplars=file, **common)
    return out


VARIANTS: dict[str, Variant] = {**_compact(), **_gsm8k_paper(), **_math_paper()}


def load_exemplars(benchmark: str, path: str = "") -> list[dict]:
    """Our standard exemplar file for the benchmark (GSM8K: 8 solutions from the GSM8K train set, MIT; MATH: 4 of
    our own), or a user's JSONL with question/problem, reasoning, answer."""
    path = path or os.path.join(EXEMPLAR_DIR, f"{benchmark}_cot.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def variant_exemplars(variant: Variant, path: str = "") -> list[dict]:
    """The variant's own exemplar file (the synthetic variants have long solutions), or a user's file."""
    return load_exemplars(variant.benchmark, path or os.path.join(EXEMPLAR_DIR, variant.exemplars))


def _question(ex: dict) -> str:
    return ex.get("question") or ex.get("problem") or ""


def format_shot(variant: Variant, question: str, reasoning: str | None = None, answer: str | None = None) -> str:
    """One exemplar (with reasoning and answer: query, target delimiter, target) or the final query (without)."""
    head = variant.query.format(question=question)
    if reasoning is None:
        return head
    return head + variant.target_delimiter + variant.target.format(reasoning=reasoning, answer=answer)


def build_prompt(variant: Variant, question: str, exemplars: Sequence[dict], num_shots: int | None = None) -> str:
    """The exemplars in the order given (see shot_orders for the variant's order), then the question."""
    shots = list(exemplars)[: num_shots if num_shots is not None else len(exemplars)]
    parts = [format_shot(variant, _question(e), e["reasoning"], e["answer"]) for e in shots]
    parts.append(format_shot(variant, question))
    return variant.delimiter.join(parts)


def shot_orders(variant: Variant, num_exemplars: int, num_questions: int) -> list[list[int]]:
    """Exemplar indices for each evaluated question, in prompt order.

    first_n: the first k in file order. random: lm-eval 0.4.4's `default` sampler, which keeps one
    `random.Random(fewshot_seed)` for the task and calls `rng.sample(exemplars, k)` once per question in dataset
    order, so question i gets the (i+1)-th draw (the order changes from question to question)."""
    k = min(variant.num_fewshot or num_exemplars, num_exemplars)
    if variant.order == "first_n":
        return [list(range(k)) for _ in range(num_questions)]
    if variant.order != "random":
        raise ValueError(f"variant {variant.name}: exemplar order {variant.order!r}; choose first_n or random")
    rng = random.Random(variant.fewshot_seed)
    return [rng.sample(range(num_exemplars), k) for _ in range(num_questions)]


def fit_prompts(variant: Variant, questions: Sequence[str], exemplars: Sequence[dict], tokenizer,
                max_prompt_tokens: int, mode: str = "drop_exemplars") -> tuple[list[list[int]], int]:
    """Token ids of every prompt within the limit (exemplars in the variant's order), and how many prompts had to
    be shortened (never silent).

    drop_exemplars: remove the earliest exemplars until the prompt fits (the question itself is kept whole);
    left_truncate: keep the last tokens, as the original's vLLM truncation did."""
    if mode not in ("drop_exemplars", "left_truncate"):
        raise ValueError(f"prompt truncation mode {mode!r}; choose drop_exemplars or left_truncate")
    out, shortened = [], 0
    for q, order in zip(questions, shot_orders(variant, len(exemplars), len(questions))):
        shots = [exemplars[i] for i in order]
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
