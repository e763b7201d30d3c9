"""The few-shot task variants (spec 7.2) against hand-written oracles: the literal one-exemplar prompt of every
registered variant, each variant's settings, the exemplar order of the random-order variants, and grading on
literal model outputs. No model; a word-level stand-in tokenizer where token counts matter."""

import random
import re

import pytest

from bolt_jax.eval import grading, prompts
from bolt_jax.eval.fewshot import Example, evaluate_fewshot, grade

SOL, EOL, PRIOR, POST = "<|START_OF_LATENT|>", "<|END_OF_LATENT|>", "<|PRIOR_PREFIX|>", "<|POSTERIOR_PREFIX|>"
ALL4 = (SOL, EOL, PRIOR, POST)
GSM_SHOT = [{"question": "What is 2 + 3?", "reasoning": "2 + 3 = 5.", "answer": "5"}]
MATH_SHOT = [{"problem": "Solve $x+1=2$.", "reasoning": "$x = 1$.", "answer": "1"}]
DELIM = "\n\n\n\n##Problem\n"
MATH_PLAIN = ("Problem:\nSolve $x+1=2$.\n\nSolution: $x = 1$.\nFinal Answer: The final answer is $1$. I hope it is "
              "correct.\n\nProblem:\nFind $y$.\n\nSolution:")
MATH_LATENT = (f"Problem:\nSolve $x+1=2$.\n{SOL}{PRIOR}$x = 1$.\nThe final answer is $1$\n{EOL} Final Answer: The "
               f"final answer is $1$. I hope it is correct.\n\nProblem:\nFind $y$.\n{SOL}{PRIOR}")

# written by hand from the original's task YAMLs (spec 7.2): one exemplar, then the question
EXPECTED_PROMPTS = {
    "gsm8k_cot": "Q: What is 2 + 3?\nA: 2 + 3 = 5. The answer is 5.\n\nQ: What is 4 + 4?\nA:",
    "latent_gsm8k_cot": f"Q: What is 2 + 3?\nA:{SOL}{PRIOR}2 + 3 = 5.{EOL} The answer is 5.\n\nQ: What is 4 + 4?\n"
                        f"A:{SOL}{PRIOR}",
    "gsm8k_cot_alt": f"Q: What is 2 + 3?\nA: 2 + 3 = 5. The answer is 5.{DELIM}Q: What is 4 + 4?\nA:",
    "latent_gsm8k_cot_alt": f"Q: What is 2 + 3?\nA:{SOL}{PRIOR}2 + 3 = 5.{EOL} The answer is 5.{DELIM}"
                            f"Q: What is 4 + 4?\nA:{SOL}{PRIOR}",
    "gsm8k_cot_synthetic_alt": "Question: What is 2 + 3?\nFinal Answer: 2 + 3 = 5. Therefore, the final answer is 5. "
                               f"I hope it is correct.{DELIM}Question: What is 4 + 4?\nFinal Answer:",
    "latent_gsm8k_cot_synthetic_alt": f"Question: What is 2 + 3?\nFinal Answer:{SOL}{PRIOR}2 + 3 = 5. Therefore, the "
                                      f"answer is 5.{EOL} The final answer is 5. I hope it is correct.{DELIM}"
                                      f"Question: What is 4 + 4?\nFinal Answer:{SOL}{PRIOR}",
    "math_cot": MATH_PLAIN,
    "latent_math_cot": f"Problem:\nSolve $x+1=2$.\n{SOL}{PRIOR}$x = 1$.\nThe final answer is $1$. I hope it is "
                       f"correct.\n{EOL} Final Answer: The final answer is $1$. I hope it is correct.\n\nProblem:\n"
                       f"Find $y$.\n{SOL}{PRIOR}",
    "hendrycks_math_cot": MATH_PLAIN,
    "hendrycks_math_cot_synthetic": MATH_PLAIN,
    "latent_hendrycks_math_cot": MATH_LATENT,
    "latent_hendrycks_math_cot_synthetic": MATH_LATENT,
}

# (delimiter, order, shots, max new tokens, prompt tokens, truncation, stops, banned, exemplar file)
GSM_STOPS = ("Q:", "</s>", "<|im_end|>")
SYN_STOPS = ("Q:", "Question:", "</s>", "<|im_end|>")
EXPECTED_SETTINGS = {
    "gsm8k_cot": ("\n\n", "first_n", None, 256, 1024, "drop_exemplars", ("Q:", "</s>", "\n\n\n"), ALL4,
                  "gsm8k_cot.jsonl"),
    "latent_gsm8k_cot": ("\n\n", "first_n", None, 256, 1024, "drop_exemplars", ("Q:", "</s>", SOL), (),
                         "gsm8k_cot.jsonl"),
    "math_cot": ("\n\n", "first_n", None, 256, 1024, "drop_exemplars", ("Problem:", "</s>"), ALL4, "math_cot.jsonl"),
    "latent_math_cot": ("\n\n", "first_n", None, 256, 1024, "drop_exemplars", ("Problem:", "</s>", SOL), (),
                        "math_cot.jsonl"),
    "gsm8k_cot_alt": (DELIM, "random", 8, 1024, 1024, "left_truncate", GSM_STOPS, ALL4, "gsm8k_cot.jsonl"),
    "latent_gsm8k_cot_alt": (DELIM, "random", 8, 1024, 1024, "left_truncate", GSM_STOPS + (SOL,), (),
                             "gsm8k_cot.jsonl"),
    "gsm8k_cot_synthetic_alt": (DELIM, "random", 8, 1024, 1024, "left_truncate", SYN_STOPS + (EOL,), ALL4,
                                "gsm8k_cot_synthetic.jsonl"),
    "latent_gsm8k_cot_synthetic_alt": (DELIM, "random", 8, 1024, 1024, "left_truncate", SYN_STOPS + (SOL,), (),
                                       "gsm8k_cot_synthetic.jsonl"),
    "hendrycks_math_cot": ("\n\n", "first_n", 4, 1024, 1024, "left_truncate", ("Problem:",), ALL4, "math_cot.jsonl"),
    "hendrycks_math_cot_synthetic": ("\n\n", "first_n", 4, 1024, 1024, "left_truncate", ("Problem:",), ALL4,
                                     "math_cot_synthetic.jsonl"),
    "latent_hendrycks_math_cot": ("\n\n", "first_n", 4, 1024, 1024, "left_truncate", ("Problem:", SOL), (),
                                  "math_cot.jsonl"),
    "latent_hendrycks_math_cot_synthetic": ("\n\n", "first_n", 4, 1024, 1024, "left_truncate", ("Problem:", SOL), (),
                                            "math_cot_synthetic.jsonl"),
}


def test_every_variant_is_covered():
    assert set(prompts.VARIANTS) == set(EXPECTED_PROMPTS) == set(EXPECTED_SETTINGS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PROMPTS))
def test_literal_one_exemplar_prompt(name):
    v = prompts.VARIANTS[name]
    if v.benchmark == "gsm8k":
        assert prompts.build_prompt(v, "What is 4 + 4?", GSM_SHOT) == EXPECTED_PROMPTS[name]
    else:
        assert prompts.build_prompt(v, "Find $y$.", MATH_SHOT) == EXPECTED_PROMPTS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_SETTINGS))
def test_variant_settings(name):
    v = prompts.VARIANTS[name]
    got = (v.delimiter, v.order, v.num_fewshot, v.max_new_tokens, v.max_prompt_tokens, v.truncation,
           v.stop_strings, v.banned, v.exemplars)
    assert got == EXPECTED_SETTINGS[name]
    assert v.fewshot_seed == 1234 and v.latent == name.startswith("latent_")
    assert len(prompts.variant_exemplars(v)) == (8 if v.benchmark == "gsm8k" else 4)


def test_latent_math_exemplar_is_the_originals_conversion():
    """The original's convert_to_latent_format, applied here to our plain target, gives our latent target."""
    plain = prompts.VARIANTS["hendrycks_math_cot_synthetic"]
    latent = prompts.VARIANTS["latent_hendrycks_math_cot_synthetic"]
    for ex in prompts.variant_exemplars(plain):
        solution = plain.target.format(reasoning=ex["reasoning"], answer=ex["answer"])
        final = re.search(r"Final Answer: (.*). I hope it is correct.", solution).group(1)
        converted = solution.replace("\nFinal Answer:", f"\n{final}\n{EOL} Final Answer:")
        assert latent.target.format(reasoning=ex["reasoning"], answer=ex["answer"]) == converted


def test_our_exemplar_files_render_as_the_spec_says():
    """One real exemplar of each synthetic file, literally (the long texts are ours)."""
    v = prompts.VARIANTS["latent_gsm8k_cot_synthetic_alt"]
    shot = prompts.format_shot(v, "Q?", **{k: prompts.variant_exemplars(v)[4][k] for k in ("reasoning", "answer")})
    assert shot == (
        f"Question: Q?\nFinal Answer:{SOL}{PRIOR}To find the total number of stamps, we work out how many stamps of "
        "each design Bella bought and then add them.\n\nBella bought 11 snowflake stamps.\n\nShe bought 9 more truck "
        "stamps than snowflake stamps, so the number of truck stamps is:\n11 + 9 = 20.\n\nShe bought 13 fewer rose "
        "stamps than truck stamps, so the number of rose stamps is:\n20 - 13 = 7.\n\nNow add the three kinds of stamps "
        "together:\n11 (snowflake) + 20 (truck) + 7 (rose) = 38.\n\nSo Bella bought 38 stamps in all. Therefore, the "
        f"answer is 38.{EOL} The final answer is 38. I hope it is correct.")
    m = prompts.VARIANTS["latent_hendrycks_math_cot_synthetic"]
    ex = prompts.variant_exemplars(m)[3]
    assert prompts.format_shot(m, ex["problem"], ex["reasoning"], ex["answer"]) == (
        f"Problem:\nEvaluate $\\log_2 64 - \\log_3 9$.\n{SOL}{PRIOR}To evaluate the expression, we compute each "
        "logarithm separately and then subtract.\n\nFor $\\log_2 64$, we need the power of 2 that equals 64. Since "
        "$2^6 = 64$, we have $\\log_2 64 = 6$.\n\nFor $\\log_3 9$, we need the power of 3 that equals 9. Since "
        "$3^2 = 9$, we have $\\log_3 9 = 2$.\n\nNow subtract the second value from the first:\n$6 - 2 = 4$.\n\n"
        f"Thus, $\\log_2 64 - \\log_3 9 = 4$.\nThe final answer is $4$\n{EOL} Final Answer: The final answer is $4$. "
        "I hope it is correct.")
    for e in prompts.variant_exemplars(prompts.VARIANTS["gsm8k_cot_synthetic_alt"]):
        assert not e["reasoning"].rstrip().endswith("I hope it is correct.")  # the template adds the ending


# ------------------------------------------------------------------------------------------------ exemplar order
# The original (lm-eval 0.4.4, sampler `default`, fewshot_random_seed 1234) keeps ONE Python `random.Random(1234)`
# per task and calls ContextSampler.sample -> `rnd.sample(docs, 8)` once per test question, in dataset order: Python's
# random module, not numpy. The orders below are those draws, written out (derived with
# `r = random.Random(1234); [r.sample(range(8), 8) for _ in range(3)]`).
FIRST_THREE_ORDERS = [[7, 0, 6, 5, 4, 2, 3, 1], [5, 1, 0, 7, 4, 6, 2, 3], [2, 0, 1, 6, 4, 7, 5, 3]]


@pytest.mark.parametrize("name", ["gsm8k_cot_alt", "latent_gsm8k_cot_alt", "gsm8k_cot_synthetic_alt",
                                  "latent_gsm8k_cot_synthetic_alt"])
def test_random_order_is_lm_evals_default_sampler(name):
    v = prompts.VARIANTS[name]
    assert prompts.shot_orders(v, 8, 3) == FIRST_THREE_ORDERS
    docs = [{"question": f"q{i}"} for i in range(8)]  # sampling the docs themselves draws the same indices
    rnd = random.Random(1234)
    assert [[docs.index(d) for d in rnd.sample(docs, 8)] for _ in range(3)] == FIRST_THREE_ORDERS
    ten = random.Random(1234)  # a user's file of 10 exemplars: 8 of them per question
    assert prompts.shot_orders(v, 10, 2) == [ten.sample(range(10), 8), ten.sample(range(10), 8)]


def test_first_n_order_for_math():
    for name in ("hendrycks_math_cot", "latent_hendrycks_math_cot_synthetic", "math_cot"):
        assert prompts.shot_orders(prompts.VARIANTS[name], 4, 2) == [[0, 1, 2, 3], [0, 1, 2, 3]]


class Words:
    """One token per whitespace-separated word (a stand-in for a tokenizer where only counts matter)."""
    bos_id = 1

    def encode(self, text):
        return [hash(w) % 1000 + 2 for w in text.split()]


def test_prompts_carry_each_questions_order():
    v = prompts.VARIANTS["gsm8k_cot_alt"]
    shots = [{"question": f"Shot{i}?", "reasoning": f"r{i}.", "answer": str(i)} for i in range(8)]
    texts = [prompts.build_prompt(v, q, [shots[i] for i in order])
             for q, order in zip(["A?", "B?", "C?"], prompts.shot_orders(v, 8, 3))]
    assert [re.findall(r"Q: Shot(\d)\?", t) for t in texts] == [[str(i) for i in o] for o in FIRST_THREE_ORDERS]
    assert texts[0].startswith("Q: Shot7?\nA: r7. The answer is 7.\n\n\n\n##Problem\nQ: Shot0?")
    ids, shortened = prompts.fit_prompts(v, ["A?", "B?", "C?"], shots, Words(), 10_000)
    assert shortened == 0 and [len(i) for i in ids] == [1 + len(t.split()) for t in texts]


# ------------------------------------------------------------------------------------------------ grading
EX_GSM = Example("g", "Natalia ...?", "72")
GSM_CASES = [  # (variant, literal output, expected fields of the grade)
    ("gsm8k_cot_alt", " 48/2 = 24. 48 + 24 = 72. The answer is 72.",
     dict(strict="72", flexible="72", flexible_correct=True)),
    ("gsm8k_cot_alt", " 48 + 24 = 70. The answer is 70.", dict(strict="70", flexible="70", flexible_correct=False)),
    ("gsm8k_cot_alt", " The answer is 72. Then she sold 3 more.",  # extra text: flexible reads the last number
     dict(strict="72", flexible="3", strict_correct=True, flexible_correct=False)),
    ("gsm8k_cot_alt", " The answer is 72",  # the original's strict regex ends in "." = any character
     dict(strict="7", flexible="72", strict_correct=False, flexible_correct=True)),
    ("gsm8k_cot_alt", " The answer is 72.\n\n\n\n##Problem\nQ: Ann has 5 pens. The answer is 5.",  # cut at "Q:"
     dict(strict="72", flexible="72", flexible_correct=True)),
    ("gsm8k_cot_synthetic_alt", " 48 / 2 = 24, and 48 + 24 = 72. Therefore, the final answer is 72. I hope it is "
     "correct.\n\n\n\n##Problem\nQuestion: How many is 9?", dict(strict="72", flexible="72", flexible_correct=True)),
    ("gsm8k_cot_synthetic_alt", " She sold $1,000 worth. Therefore, the final answer is $1,000. I hope it is correct.",
     dict(strict=None, flexible="1000", flexible_correct=False)),
    ("latent_gsm8k_cot_synthetic_alt", f"48 + 24 = 72. Therefore, the answer is 72.{EOL} The final answer is 72. I "
     "hope it is correct.", dict(strict="72", flexible="72", latent_strict="72", latent_flexible="72",
                                 flexible_correct=True, latent_flexible_correct=True)),
    ("latent_gsm8k_cot_synthetic_alt", f"48 + 24 = 70. Therefore, the answer is 70.{EOL} The final answer is 72. I "
     "hope it is correct.", dict(strict="70", flexible="72", latent_strict="70", latent_flexible="70",
                                 strict_correct=False, flexible_correct=True, latent_strict_correct=False)),
    ("latent_gsm8k_cot_synthetic_alt", "48 + 24 = 72. Therefore, the answer is 72.",  # no <EoL>: no thought
     dict(strict="72", flexible="72", latent_strict=None, latent_flexible=None, latent_flexible_correct=False)),
    ("latent_gsm8k_cot_alt", f"48/2 = 24. 48 + 24 = 72.{EOL} The answer is 72.\n\n\n\n##Problem\nQ: 5 + 5?{SOL}",
     dict(strict="72", flexible="72", latent_strict=None, latent_flexible="72", flexible_correct=True)),
    ("latent_gsm8k_cot", f"The answer is 99.{EOL} The answer is 72.",  # compact variant: after the thought only
     dict(strict="72", flexible="72", flexible_correct=True)),
]


@pytest.mark.parametrize("name, text, expected", GSM_CASES)
def test_gsm8k_grading_on_literal_outputs(name, text, expected):
    g = grade(prompts.VARIANTS[name], text, EX_GSM)
    assert {k: g[k] for k in expected} == expected
    assert ("latent_strict" in g) == (name.startswith("latent_") and name != "latent_gsm8k_cot")


EX_MATH = Example("m", "A die is rolled twice...", "\\frac{1}{6}",
                  "There are $36$ outcomes and $6$ of them sum to 7, so the answer is $\\boxed{\\frac{1}{6}}$.")
MATH_CASES = [
    ("hendrycks_math_cot", " $\\frac{6}{36} = \\frac{1}{6}$.\nFinal Answer: The final answer is $\\frac{1}{6}$. I "
     "hope it is correct.", True),
    ("hendrycks_math_cot_synthetic", " $\\frac{6}{36} = \\frac{1}{3}$.\nFinal Answer: The final answer is "
     "$\\frac{1}{3}$. I hope it is correct.", False),
    ("hendrycks_math_cot", " The final answer is $\\frac{2}{12}$. I hope it is correct.", True),  # equivalent form
    ("hendrycks_math_cot", " So the answer is $\\frac{1}{3}$.\n\nProblem:\nWhat is $\\frac{1}{6}$ of 6?\n\nSolution: "
     "The final answer is $\\frac{1}{6}$.", False),  # graded before the stop string "Problem:"
    ("latent_hendrycks_math_cot_synthetic", f"$\\frac{{6}}{{36}} = \\frac{{1}}{{6}}$.\nThe final answer is "
     f"$\\frac{{1}}{{6}}$\n{EOL} Final Answer: The final answer is $\\frac{{1}}{{6}}$. I hope it is correct.", True),
    ("latent_hendrycks_math_cot", f"$\\frac{{1}}{{6}}$\n{EOL} Final Answer: The final answer is $\\frac{{1}}{{2}}$. I "
     "hope it is correct.", False),
]


@pytest.mark.parametrize("name, text, correct", MATH_CASES)
def test_math_grading_on_literal_outputs(name, text, correct):
    assert grade(prompts.VARIANTS[name], text, EX_MATH)["correct"] is correct


def test_grading_helpers():
    assert grading.cut_at_stop("a Q: b Question: c", ("Question:", "Q:")) == "a "
    assert grading.cut_at_stop("no stop", ("Q:",)) == "no stop"
    assert grading.latent_part(f" x is 3. {EOL} y") == "x is 3." and grading.latent_part("no thought") is None
    assert grading.gsm8k_latent_strict(f"so it is 4. then it is 5.{EOL} 6") == "5"


def test_evaluate_fewshot_uses_the_variants_settings():
    seen = {}

    def fake_generate(prompt_ids, *, n, **kw):
        seen.update(kw, prompts=len(prompt_ids))
        return [[f"48 + 24 = 72. Therefore, the answer is 72.{EOL} The final answer is 72. I hope it is correct."],
                [f"Therefore, the answer is 70.{EOL} The final answer is 72.\n\n\n\n##Problem\nQuestion: 9?"]]

    examples = [EX_GSM, Example("h", "Weng ...?", "72")]
    out = evaluate_fewshot(examples, "latent_gsm8k_cot_synthetic_alt", fake_generate, tokenizer=Words())
    assert seen["max_new_tokens"] == 1024 and seen["temperature"] == 0.0
    assert seen["stop_strings"] == SYN_STOPS + (SOL,) and seen["banned_token_strings"] == ()
    m = out["metrics"]
    assert (m["accuracy"], m["strict_accuracy"], m["latent_strict_accuracy"], m["latent_flexible_accuracy"]) == \
        (1.0, 0.5, 0.5, 0.5)
    assert m["max_prompt_tokens"] == 1024 and m["truncation"] == "left_truncate" and m["exemplar_order"] == "random"
    assert m["prompts_shortened"] == 2  # 8 long shots are over 1024 words, as in the original
    out = evaluate_fewshot(examples[:1], "hendrycks_math_cot", lambda p, **kw: [["The final answer is $72$."]],
                           tokenizer=Words(), max_new_tokens=7, max_prompt_tokens=4096, truncation="drop_exemplars")
    assert out["metrics"]["max_new_tokens"] == 7 and out["metrics"]["prompts_shortened"] == 0
