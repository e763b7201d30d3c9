"""Answer extraction and grading (spec 7.2): GSM8K strict/flexible (and their latent variants), MATH equivalence,
the toy corpus, and maj@k / pass@k over several samples per prompt."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from bolt_jax.data.formats import EOL

STRICT_RE = re.compile(r"answer is (\-?[0-9\.\,]+)\.")  # lm-eval's "strict-match" for GSM8K CoT
FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # its "flexible-extract": the last match


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
