"""A toy world built for BoLT: text that leaves out the reasoning its answers need, with known latent thoughts.

Each document is one problem, a chain of three arithmetic steps modulo 7 stated in words, and its answer:

    question   "start 4 , first times 2 , second plus 1 , third minus 2 ."
    thought    " start 4 first 4 times 2 = 1 second 1 plus 1 = 2 third 2 minus 2 = 0 ."   (never in raw text)
    answer     "The answer is 0 ."

Why this shape (each choice measured on this machine's CPU budget; the notes of 2026-12-04 have the figures):
- The thought is needed to predict the text: the answer is three steps composed, the thought writes each one out.
- Each part of the thought is something the demo's 1M-parameter model learns in CPU minutes. A step restates its
  question clause and the previous result (copying, which the base model's pretraining text teaches by restating
  questions) and then states one of 42 facts (plus or minus 1 or 2, times 2 or 3, mod 7), which the pretraining
  text teaches through one-step questions restated with their result. The base model never sees a chain worked
  out or an answer. What failed: 119 facts mod 7 were not memorised after 300 steps of nothing but fact tables;
  tables in the pretraining text (where the number after "plus" is a guess) kept the model from ever learning to
  copy numbers; lookups in a per-problem map and function words without operands were not copied at all.
- The thought sits between what it explains and what depends on it: the question is one paragraph (one chunk,
  true thought ""), the answer the next, so the answer chunk's prior-format thought (`<SoL><PRIOR> z <EoL> x`)
  comes right after the question (in the prefix) and before the answer (the chunk): p(z | prefix) can compute it
  and p(x | z) checks it (the answer is the thought's last number). One problem per document: with two, models
  copied the start number of the wrong question in 23% of the chosen thoughts.
- The evaluation prompt is the training format itself (`evaluation_prompt`), so it occurs in training.
- Known weakness: with small operands there are only 336 distinct questions, and raw training for 300 steps
  answers 0.435 of held-out problems (see the README's toy figures).
- Every number is one word and the tokenizer is word-level (`build_tokenizer`).

Documents and thoughts are a pure function of (seed, index).

    docs = generate(num_docs=1000, seed=0)            # list[ToyDocument]
    write_corpus("toy.jsonl", docs)                   # raw schema: {"id", "text", "answers", "metadata"}
    write_corpus("toy_aug.jsonl", docs, with_thoughts=True)   # augmented schema (spec 2.6), true thoughts
    source = ToyThoughtSource(docs); source.thought(prefix, suffix)   # the teacher: true thoughts of a chunk
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from bolt_jax.data.schema import augment_record, write_jsonl

MODULUS = 7
OPS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "+": ("plus", lambda a, b: (a + b) % MODULUS),
    "-": ("minus", lambda a, b: (a - b) % MODULUS),
    "*": ("times", lambda a, b: (a * b) % MODULUS),
}
OPERANDS = {"+": (1, 2), "-": (1, 2), "*": (2, 3)}  # 6 operations x 7 values = 42 facts
ORDINALS = ("first", "second", "third")
ANSWER_RE = re.compile(r"The answer is (\d+) \.")
QUESTION_RE = re.compile(r"start \d+(?: , [a-z]+ [a-z]+ \d+)+ \.")
STEP_RE = re.compile(r" ([a-z]+) (\d+) ([a-z]+) (\d+) = (\d+)")
THOUGHT_RE = re.compile(r"start (\d+)((?: [a-z]+ \d+ [a-z]+ \d+ = \d+)+) \.")
SEPARATOR = "\n\n"  # ends every question: the paragraph boundary the chunker cuts at
FIRST_THOUGHT = ""  # the true thought of a chunk without an answer (the document's first question)


@dataclass(frozen=True)
class ToyProblem:
    question: str  # "start 4 , first times 2 , second plus 1 , third minus 2 ."
    thought: str  # " start 4 first 4 times 2 = 1 second 1 plus 1 = 2 ..." (leading space: after <SoL><PRIOR>)
    answer: int

    @property
    def answer_sentence(self) -> str:
        return f"The answer is {self.answer} ."

    @property
    def text(self) -> str:
        """The problem as it appears in a document: question, paragraph break, answer."""
        return f"{self.question}{SEPARATOR}{self.answer_sentence}"


@dataclass
class ToyDocument:
    id: str
    problems: list[ToyProblem] = field(default_factory=list)

    def chunks(self) -> list[dict[str, str]]:
        """One chunk per paragraph, {"suffix", "latent"}; the suffixes concatenate to `text`. Questions and answers
        alternate: a question chunk's thought is "" (nothing to solve yet), an answer chunk's thought is the steps
        of the question just before it."""
        out = []
        for i, p in enumerate(self.problems):
            last = i + 1 == len(self.problems)
            out.append({"suffix": p.question + SEPARATOR, "latent": FIRST_THOUGHT})
            out.append({"suffix": p.answer_sentence + ("" if last else SEPARATOR), "latent": p.thought})
        return out

    @property
    def text(self) -> str:
        return "".join(c["suffix"] for c in self.chunks())

    def raw_record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "answers": [p.answer for p in self.problems],
                "metadata": {"source": "bolt_jax.data.toy"}}

    def augmented_record(self) -> dict[str, Any]:
        return augment_record(self.raw_record(), self.chunks())


def fact(a: int, op: str, b: int) -> str:
    """One arithmetic fact as text: "6 plus 2 = 1" (mod 7)."""
    word, fn = OPS[op]
    return f"{a} {word} {b} = {fn(a, b)}"


def make_problem(rng: np.random.Generator) -> ToyProblem:
    """A chain of three operations mod 7 from a random start: plus, minus and times once each, in a random order,
    each with a small operand (OPERANDS).

    A thought step restates its question clause as an arithmetic fact ("second times 2" -> "second 1 times 2 = 2"):
    copying the clause and the previous result is what the base model's pretraining taught it (restating), and the
    result is one of 42 facts."""
    value = int(rng.integers(MODULUS))
    clauses, steps = [f"start {value}"], [f"start {value}"]
    for ordinal, op in zip(ORDINALS, rng.permutation(list(OPS))):
        op = str(op)
        operand = int(rng.choice(OPERANDS[op]))
        word, fn = OPS[op]
        clauses.append(f"{ordinal} {word} {operand}")
        steps.append(f"{ordinal} {fact(value, op, operand)}")
        value = fn(value, operand)
    return ToyProblem(" , ".join(clauses) + " .", " " + " ".join(steps) + " .", value)


def generate_document(seed: int, index: int, min_problems: int = 1, max_problems: int = 1) -> ToyDocument:
    """Document `index` of the corpus `seed`: a pure function of both."""
    rng = np.random.default_rng([seed, index])
    n = int(rng.integers(min_problems, max_problems + 1))
    return ToyDocument(id=f"toy-{seed}-{index}", problems=[make_problem(rng) for _ in range(n)])


def generate(num_docs: int, seed: int = 0, **kw) -> list[ToyDocument]:
    return [generate_document(seed, i, **kw) for i in range(num_docs)]


def write_corpus(path: str | os.PathLike, docs: Sequence[ToyDocument], with_thoughts: bool = False) -> int:
    """JSONL in the standard schema (raw, or augmented with the true thoughts); atomic."""
    return write_jsonl(path, (d.augmented_record() if with_thoughts else d.raw_record() for d in docs))


def pretraining_record(seed: int, index: int) -> dict[str, Any]:
    """A raw document of the base model's pretraining text: what a base model knows before BoLT.

    Three-step questions, each restated without its commas ("in short : start 3 first plus 2 second times 3 ...")
    right after it or a sentence later, never answered; and one-step questions restated with their result ("start
    4 , first times 2 ." -> "in short : start 4 first 4 times 2 = 1 ."). So the base model can read a question,
    copy it and apply one operation (as TinyLlama knows its arithmetic facts and how to read), but has never seen
    a chain of steps, a multi-step problem solved or an answer: the held-out problems cannot be memorised from this
    text. (Arithmetic tables here kept a tiny base model from ever learning to copy operands: the number after
    "plus" is a guess in a table and a copy in a restatement; here it is always a copy.)"""
    rng = np.random.default_rng([seed, index, 1])
    paragraphs = []
    for _ in range(int(rng.integers(2, 5))):
        question = make_problem(rng).question
        if rng.random() < 0.5:
            short = restatement(question)
        else:  # its first step alone, solved
            question = question.split(" , second ")[0] + " ."
            short = solve_question(question)[0].strip()
        paragraphs += [question, *(["let us write it in short ."] if rng.random() < 0.5 else []),
                       f"in short : {short}"]
    return {"id": f"toy-pretrain-{seed}-{index}", "text": SEPARATOR.join(paragraphs),
            "metadata": {"source": "bolt_jax.data.toy.pretraining_record"}}


def restatement(question: str) -> str:
    """A question without its commas: "start 3 first up second twice third flip fourth up ."; its thought is
    this with each result after its function."""
    return question.replace(" ,", "")


# ------------------------------------------------------------------------------------------------ checking
def extract_answer(text: str) -> int | None:
    """The first "The answer is N ." in `text` (what a model states right after its thought), or None."""
    m = ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


def solve_steps(thought: str) -> int | None:
    """Check a thought's arithmetic (a start value, then "ordinal previous op operand = result" steps mod 7, each
    from the previous result); returns the last result if every step is right, else None."""
    m = THOUGHT_RE.fullmatch(thought.strip())
    if not m:
        return None
    value = int(m.group(1))
    by_word = {word: fn for word, fn in OPS.values()}
    for k, (label, first, word, operand, result) in enumerate(STEP_RE.findall(m.group(2))):
        if (k >= len(ORDINALS) or label != ORDINALS[k] or int(first) != value or word not in by_word
                or by_word[word](value, int(operand)) != int(result)):
            return None
        value = int(result)
    return value


def check_document(doc: ToyDocument) -> bool:
    """Every problem's stated answer follows from its thought (the corpus checks itself)."""
    return all(extract_answer(p.answer_sentence) == p.answer == solve_steps(p.thought) for p in doc.problems)


THOUGHT_PARTS = ("copy_start", "copy_previous", "copy_op", "copy_operand", "result", "format")


def thought_parts(words: Sequence[str]) -> list[str]:
    """The part each word of a thought plays: copy_start (the number after "start"), copy_previous (the previous
    result, after an ordinal), copy_op and copy_operand (the question's clause), result (after "=": one fact),
    format (the rest). A model that fails a part fails every thought; the report shows each part's log-probability."""
    ops = {word for word, _ in OPS.values()}
    out = []
    for j, w in enumerate(words):
        w, prev = w.strip(), words[j - 1].strip() if j else ""
        out.append("copy_start" if prev == "start" else "copy_previous" if prev in ORDINALS
                   else "copy_op" if w in ops else "copy_operand" if prev in ops
                   else "result" if prev == "=" else "format")
    return out


def normalize_thought(thought: str) -> str:
    return " ".join(thought.split())


def thought_is_correct(thought: str, true_thought: str) -> bool:
    """A sampled thought is correct when it is the problem's true chain of steps (up to whitespace): a thought that
    only ends in the stated answer, with a wrong step on the way, is not."""
    return normalize_thought(thought) == normalize_thought(true_thought)


# ------------------------------------------------------------------------------------------------ evaluation
def evaluation_prompt(question: str, exemplars: Sequence[ToyProblem], latent: bool) -> str:
    """A few-shot prompt in the training format itself: a document of solved problems, then the question.

    latent: the prior format (`<SoL><PRIOR> z <EoL>` before every answer, the empty thought before the first
    question), ending `question \\n\\n <SoL><PRIOR>` so the model writes its thought, <EoL>, then the answer.
    raw: the plain document, ending `question \\n\\n` so the model writes the answer directly."""
    from bolt_jax.data.formats import EOL, PRIOR, SOL
    doc = ToyDocument("prompt", [*exemplars, ToyProblem(question, "", 0)])
    parts = []
    for c in doc.chunks()[:-1]:
        parts.append(f"{SOL}{PRIOR}{c['latent']}{EOL}{c['suffix']}" if latent else c["suffix"])
    # the last chunk is the question's own answer: stop before it
    return "".join(parts) + (f"{SOL}{PRIOR}" if latent else "")


def evaluation_answer(generated: str) -> int | None:
    """The answer a model states after the prompt: the first "The answer is N ." (a latent model writes its thought
    and <EoL> first; what follows the answer, e.g. a new problem, is ignored)."""
    return extract_answer(generated)


# ------------------------------------------------------------------------------------------------ teacher
def solve_question(question: str) -> tuple[str, int]:
    """(true thought, answer) of a toy question, computed from its words as the generator computes them."""
    m = re.fullmatch(r"start (\d+)((?: , [a-z]+ [a-z]+ \d+)+) \.", question.strip())
    if not m:
        raise ValueError(f"not a toy question: {question[:80]!r}")
    value = int(m.group(1))
    steps = [f"start {value}"]
    by_word = {word: op for op, (word, _) in OPS.items()}
    for label, word, operand in re.findall(r" , ([a-z]+) ([a-z]+) (\d+)", m.group(2)):
        steps.append(f"{label} {fact(value, by_word[word], int(operand))}")
        value = OPS[by_word[word]][1](value, int(operand))
    return " " + " ".join(steps) + " .", value


class ToyThoughtSource:
    """The true thoughts of toy text for any (prefix, suffix) chunk: the steps of every problem whose answer
    sentence lies in the suffix, in order; "" when the suffix has no answer. A problem's thought is computed from
    its question (the last question before the answer, in the suffix or the prefix) and must give the stated
    answer. Stand-in for the API teacher (synth) in tests and the demo."""

    def __init__(self, docs: Sequence[ToyDocument] = ()):
        del docs  # every toy thought follows from its question; kept for the teacher interface

    def thought(self, prefix: str, suffix: str) -> str:
        context = "" if prefix == "N/A" else prefix
        thoughts = []
        for m in ANSWER_RE.finditer(suffix):
            questions = QUESTION_RE.findall(context + suffix[:m.start()])
            if not questions or solve_question(questions[-1])[1] != int(m.group(1)):
                raise KeyError(f"no toy problem ends at {suffix[:m.end()][-80:]!r}: not from this corpus")
            thoughts.append(solve_question(questions[-1])[0])
        return " ".join(thoughts)

    def __call__(self, prefix: str, suffix: str) -> str:
        return self.thought(prefix, suffix)


# ------------------------------------------------------------------------------------------------ tokenizer
def vocabulary() -> list[str]:
    """Every word of the toy world, with and without a leading space: the word-level tokenizer's vocabulary."""
    words = ["The", "answer", "is", "in", "short", ":", "let", "us", "write", "it", "start", *ORDINALS,
             *(w for w, _ in OPS.values()),
             "=", ".", ",", *(str(n) for n in range(MODULUS))]
    return [*words, *(" " + w for w in words), SEPARATOR, "\n", " "]


def build_tokenizer(out_dir: str | os.PathLike) -> str:
    """A word-level tokenizer for the toy world (every word and number one token, the space before it included),
    with BOS/EOS and the four BoLT tokens appended last, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from bolt_jax.data.formats import SPECIAL_TOKENS
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *vocabulary()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # words keep the space before them; digits, punctuation and letters split apart, so a decoded sample
    # ("8" "." written without a space) re-encodes to the same tokens
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\n\n|\s"), "isolated")
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir)
    return out_dir
