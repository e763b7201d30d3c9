"""Answer extraction and grading (spec 7.2): GSM8K strict/flexible (and their latent variants), MATH equivalence,
the toy corpus, and maj@k / pass@k over several samples per prompt.

GSM8K filters are the original task YAML's regexes, quirks included: strict-match's last "." is any character (so
"The answer is 72" at the very end of a text reads "7"), it takes the first match; flexible-extract takes the last
number. Latent variants add latent-strict-match (the last "is N" inside the thought, i.e. before the first <EoL>) and
latent-flexible-extract (the last number inside the thought)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from bolt_jax.data.formats import EOL

STRICT_RE = re.compile(r"answer is (\-?[0-9\.\,]+).")  # the original's "strict-match" (first match; "." any char)
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # its "flexible-extract": the last match
LATENT_STRICT_RE = re.compile(r"is (\-?[0-9\.\,]+).")  # "latent-strict-match": the last match inside the thought


def normalize_number(text: str | None) -> str | None:
    """exact_match normalisation of GSM8K: drop ',', '$', anything up to '#### ', a trailing '.'; lower case."""
    if text is None:
        return None
    text = re.sub(r"(?s).*#### ", "", text)
    text = text.replace(",", "").replace("$", "").strip().lower()
    text = re.sub(r"\.$", "", text)
    return text


def after_latent(text: str) -> str:
    """Latent variants grade what follows the thought: the text after the first <EoL> (all of it if none)."""
    return text.split(EOL, 1)[1] if EOL in text else text


def gsm8k_strict(text: str, latent: bool = False) -> str | None:
    text = after_latent(text) if latent else text
    m = STRICT_RE.search(text)
    return normalize_number(m.group(1)) if m else None


def gsm8k_flexible(text: str, latent: bool = False) -> str | None:
    text = after_latent(text) if latent else text
    matches = FLEXIBLE_RE.findall(text)
    if not matches:
        return None
    a, b = matches[-1]
    return normalize_number(a or b)


def latent_part(text: str) -> str | None:
    """The thought of a latent variant's output: the text before the first <EoL> (None without one), as the
    original's `([\\s\\S]*?)<\\|END_OF_LATENT\\|>` filter."""
    return text.split(EOL, 1)[0].strip() if EOL in text else None


def gsm8k_latent_strict(text: str) -> str | None:
    """latent-strict-match: the last "is N" inside the thought."""
    thought = latent_part(text)
    matches = LATENT_STRICT_RE.findall(thought) if thought is not None else []
    return normalize_number(matches[-1]) if matches else None


def gsm8k_latent_flexible(text: str) -> str | None:
    """latent-flexible-extract: the last number inside the thought."""
    thought = latent_part(text)
    return gsm8k_flexible(thought) if thought is not None else None


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the earliest stop string: what the engine returns when it honours the stops (the original
    then also removed every stop string from the text, a no-op after the cut)."""
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return text[:min(hits)] if hits else text


def gsm8k_gold(answer: str) -> str:
    """The number after '####' of a GSM8K answer."""
    return normalize_number(answer.split("####")[-1])


# ------------------------------------------------------------------------------------------------ MATH
_BOXED = "\\boxed{"


def last_boxed(text: str) -> str | None:
    i = text.rfind(_BOXED)
    if i < 0:
        return None
    depth, j = 1, i + len(_BOXED)
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i + len(_BOXED): j - 1] if depth == 0 else None


FINAL_RE = re.compile(r"final answer is \$(.+?)\$", re.DOTALL)


def math_final_answer(text: str) -> str | None:
    """'The final answer is $X$' (the exemplars' ending), else the last \\boxed{X}."""
    m = FINAL_RE.findall(text)
    if m:
        return m[-1].strip()
    return last_boxed(text)


def normalize_math(ans: str | None) -> str | None:
    """A conservative string normalisation of LaTeX answers (used when math-verify is not installed)."""
    if ans is None:
        return None
    s = ans.strip().strip("$").strip()
    for a, b in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", ""),
                 ("dfrac", "frac"), ("tfrac", "frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""),
                 ("\\$", ""), ("\\text{ }", ""), (" ", "")):
        s = s.replace(a, b)
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    s = re.sub(r"\.$", "", s)
    m = re.fullmatch(r"\\frac\{?(-?\d+)\}?\{?(\d+)\}?", s)
    if m and int(m.group(2)):
        return repr(int(m.group(1)) / int(m.group(2)))
    try:
        return repr(float(s))
    except ValueError:
        return s


def math_equivalent(prediction_text: str, gold_solution: str) -> bool:
    """math-verify (the original's grader) when installed, else the normalised final answers compared."""
    try:
        from math_verify import parse, verify
    except ImportError:
        pred, gold = math_final_answer(prediction_text), math_final_answer(gold_solution)
        return pred is not None and normalize_math(pred) == normalize_math(gold)
    gold = parse(gold_solution)
    pred = parse(prediction_text)
    return bool(gold) and bool(pred) and bool(verify(gold, pred))


# ------------------------------------------------------------------------------------------------ several samples
def majority(answers: Sequence[str | None]) -> str | None:
    votes = Counter(a for a in answers if a is not None)
    return votes.most_common(1)[0][0] if votes else None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
