"""A toy math corpus whose latent thoughts are known: the stand-in for FineMath and GPT-4o-mini in the demo and tests.

Each document is 2-4 short problems (multi-step arithmetic and word problems with small numbers), one per
paragraph, each ending "The answer is N." The true latent thought of a problem is its intermediate steps, e.g.
"3 * 12 = 36. 36 - 5 = 31." Documents and thoughts are a pure function of (seed, index); the vocabulary is a few
hundred words and numbers, so a model of a few million parameters can learn it on a CPU in minutes, and every
answer is checkable (`extract_answer`, `check_document`).

    docs = generate(num_docs=1000, seed=0)            # list[ToyDocument]
    write_corpus("toy.jsonl", docs)                   # raw schema: {"id", "text", "answers", "metadata"}
    write_corpus("toy_aug.jsonl", docs, with_thoughts=True)   # augmented schema (spec 2.6), true thoughts
    source = ToyThoughtSource(docs); source.thought(prefix, suffix)   # the teacher: true steps of the suffix

A document's problems are its natural chunks: `document.chunks()` gives (suffix, thought) pairs whose suffixes
join back to the text (the "\\n\\n" after a problem ends its chunk, like the chunker's paragraphs).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from bolt_jax.data.schema import augment_record, write_jsonl

NAMES = ("Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "June", "Kai", "Lena", "Max", "Nia")
ITEMS = ("apples", "pens", "books", "cards", "marbles", "stickers", "eggs", "shells")
ANSWER_RE = re.compile(r"The answer is (-?\d+)\.")
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class ToyProblem:
    text: str  # the problem and its answer sentence
    thought: str  # the intermediate steps
    answer: int


@dataclass
class ToyDocument:
    id: str
    problems: list[ToyProblem] = field(default_factory=list)

    @property
    def text(self) -> str:
        return SEPARATOR.join(p.text for p in self.problems)

    def chunks(self) -> list[dict[str, str]]:
        """One chunk per problem: {"suffix", "latent"}; the suffixes concatenate to `text`."""
        last = len(self.problems) - 1
        return [{"suffix": p.text + (SEPARATOR if i < last else ""), "latent": p.thought}
                for i, p in enumerate(self.problems)]

    def raw_record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "answers": [p.answer for p in self.problems],
                "metadata": {"source": "bolt_jax.data.toy"}}

    def augmented_record(self) -> dict[str, Any]:
        return augment_record(self.raw_record(), self.chunks())


def _boxes(rng: np.random.Generator) -> ToyProblem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = int(rng.integers(2, 10)), int(rng.integers(2, 13))
    c = int(rng.integers(1, a * b))
    ab, ans = a * b, a * b - c
    return ToyProblem(f"{name} has {a} boxes with {b} {item} in each box. {name} gives away {c} {item}. "
                      f"How many {item} does {name} have now? The answer is {ans}.",
                      f"{a} * {b} = {ab}. {ab} - {c} = {ans}.", ans)


def _change(rng: np.random.Generator) -> ToyProblem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = int(rng.integers(2, 8)), int(rng.integers(2, 10))
    ab = a * b
    c = int(rng.integers(ab, ab + 30) // 5 * 5 + 5)
    ans = c - ab
    return ToyProblem(f"{name} buys {a} {item} at {b} dollars each and pays with {c} dollars. "
                      f"How much change does {name} get? The answer is {ans}.",
                      f"{a} * {b} = {ab}. {c} - {ab} = {ans}.", ans)


def _pages(rng: np.random.Generator) -> ToyProblem:
    name = rng.choice(NAMES)
    a, b = int(rng.integers(5, 40)), int(rng.integers(1, 20))
    t = a + b
    ans = a + t
    return ToyProblem(f"{name} reads {a} pages on Monday and {b} more pages on Tuesday than on Monday. "
                      f"How many pages does {name} read in total? The answer is {ans}.",
                      f"{a} + {b} = {t}. {a} + {t} = {ans}.", ans)


def _expression(rng: np.random.Generator) -> ToyProblem:
    a, b, c = (int(x) for x in rng.integers(1, 12, size=3))
    s = a + b
    ans = s * c
    return ToyProblem(f"Compute ({a} + {b}) * {c}. The answer is {ans}.", f"{a} + {b} = {s}. {s} * {c} = {ans}.",
                      ans)


def _share(rng: np.random.Generator) -> ToyProblem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    k, each, extra = int(rng.integers(2, 6)), int(rng.integers(2, 10)), int(rng.integers(1, 10))
    total = k * each
    ans = total + extra
    return ToyProblem(f"{name} shares {item} equally among {k} friends and each friend gets {each}. "
                      f"{name} keeps {extra} more. How many {item} did {name} start with? The answer is {ans}.",
                      f"{k} * {each} = {total}. {total} + {extra} = {ans}.", ans)


TEMPLATES: tuple[Callable[[np.random.Generator], ToyProblem], ...] = (_boxes, _change, _pages, _expression, _share)


def generate_document(seed: int, index: int, min_problems: int = 2, max_problems: int = 4) -> ToyDocument:
    """Document `index` of the corpus `seed`: a pure function of both."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(min_problems, max_problems + 1))
    problems = [TEMPLATES[int(rng.integers(len(TEMPLATES)))](rng) for _ in range(n)]
    return ToyDocument(id=f"toy-{seed}-{index}", problems=problems)


def generate(num_docs: int, seed: int = 0, **kw) -> list[ToyDocument]:
    return [generate_document(seed, i, **kw) for i in range(num_docs)]


def write_corpus(path: str | os.PathLike, docs: Sequence[ToyDocument], with_thoughts: bool = False) -> int:
    """JSONL in the standard schema (raw, or augmented with the true thoughts); atomic."""
    return write_jsonl(path, (d.augmented_record() if with_thoughts else d.raw_record() for d in docs))


def extract_answer(text: str) -> int | None:
    """The last "The answer is N." in `text`, or None."""
    found = ANSWER_RE.findall(text)
    return int(found[-1]) if found else None


def solve_steps(thought: str) -> int | None:
    """Check a thought's arithmetic ("a op b = c." steps); returns the last result if every step is right."""
    result = None
    for a, op, b, c in re.findall(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)\.", thought):
        a, b, c = int(a), int(b), int(c)
        if {"+": a + b, "-": a - b, "*": a * b}[op] != c:
            return None
        result = c
    return result


def check_document(doc: ToyDocument) -> bool:
    """Every problem's stated answer follows from its thought (the corpus checks itself)."""
    return all(extract_answer(p.text) == p.answer == solve_steps(p.thought) for p in doc.problems)


class ToyThoughtSource:
    """The true thoughts of a toy corpus for any (prefix, suffix) chunk: the steps of every problem whose answer
    sentence lies in the suffix, in order, so chunks cut anywhere by the chunker get the right thoughts (a
    problem split over chunks belongs to the chunk with its answer). "" when the suffix has no answer.
    Stand-in for the API teacher (synth) in tests and the demo."""

    def __init__(self, docs: Sequence[ToyDocument]):
        self._full: dict[str, str] = {}  # problem text -> thought
        self._tail: dict[str, str] = {}  # question sentence + answer sentence -> thought (when the text is cut)
        for d in docs:
            for p in d.problems:
                self._full.setdefault(p.text, p.thought)
                self._tail.setdefault(_tail(p.text), p.thought)
        self._full_lengths = sorted({len(k) for k in self._full}, reverse=True)
        self._tail_lengths = sorted({len(k) for k in self._tail}, reverse=True)

    def _lookup(self, context: str) -> str | None:
        for table, lengths in ((self._full, self._full_lengths), (self._tail, self._tail_lengths)):
            for n in lengths:
                if n <= len(context) and context[-n:] in table:
                    return table[context[-n:]]
        return None

    def thought(self, prefix: str, suffix: str) -> str:
        context = "" if prefix == "N/A" else prefix
        thoughts = []
        for m in ANSWER_RE.finditer(suffix):
            found = self._lookup(context + suffix[:m.end()])
            if found is None:
                raise KeyError(f"no toy problem ends at {suffix[:m.end()][-80:]!r}: not from this corpus")
            thoughts.append(found)
        return " ".join(thoughts)

    def __call__(self, prefix: str, suffix: str) -> str:
        return self.thought(prefix, suffix)


def _tail(problem_text: str) -> str:
    """The question sentence and the answer sentence of a problem."""
    answer_at = problem_text.rindex(" The answer is")
    question_at = max(problem_text.rfind(". ", 0, answer_at), problem_text.rfind("? ", 0, answer_at))
    return problem_text[question_at + 2:] if question_at >= 0 else problem_text
