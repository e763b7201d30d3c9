"""A toy world built for BoLT: text that leaves out the reasoning its answers need, with known latent thoughts.

Each document is one problem, a chain of four operations modulo 7, exactly one of them a new operation, and its
answer:

    question   "start_4 , first_double , second_up , third_triple , fourth_upup ."
    thought    " start 4 , first double gives 1 , second up gives 2 , third triple gives 6 ,
                fourth upup gives 1 ."                                                   (never in raw text)
    answer     "The answer is 1 ."

What the method needs, and how this world provides it:
- The thought is needed to predict the text: the answer is four steps composed (7 x 4 x 2 x 4^3 = 3,584 distinct
  questions, so no model memorises its way to held-out answers, and raw training cannot learn the composition);
  the thought writes each step out.
- Something only EM can teach: the base model's pretraining text (`pretraining_record`) teaches it to read a
  question, to work out chains of the four familiar operations and that an answer is where a worked chain ends (as
  TinyLlama knows some arithmetic and that a solution's last line is its answer), but never states a fact of the
  two NEW_OPS (14 facts). The warmstart teacher (`guessing_teacher_corpus`) has never seen them either: at the new
  step it guesses, carries on correctly from its guess, and the warmstart document states the answer its chain
  reached; its guesses of each fact cover the 7 values evenly. So the warmstart model writes the format and the
  familiar steps, knows that an answer follows from a thought, and is uniformly unsure of every new fact (right one
  time in seven). The bootstrap corpus is true text: a new fact is right exactly when the thought reaches the
  stated answer, which only the E-step's importance weights see (p(x | z) checks the answer). EM has to discover
  the 14 facts from the answers, and each iteration's model samples them right more often: the chosen thoughts
  improve from iteration to iteration, not only the model that trains on them. (Every M-step starts from the
  base, which knows that an answer must follow from the thought, so the weights stay able to check it however
  mixed the previous E-step's chosen thoughts were.)
- One unknown step per problem (`make_problem_question`): K samples of a thought are then K guesses of one fact,
  and a thought is right exactly when its new fact is.
- The thought sits between what it explains and what depends on it: the question is one paragraph (one chunk,
  true thought ""), the answer the next, so the answer chunk's prior-format thought (`<SoL><PRIOR> z <EoL> x`)
  comes right after the question (in the prefix) and before the answer (the chunk): p(z | prefix) can compute it
  and p(x | z) checks it (the answer is the thought's last number).
- Everything a 1M-parameter model has to do is local or one look-up: every clause of a question is one word
  ("second_up"), so a thought reads a step's operation with one look-up keyed by the ordinal; a result depends on
  the three tokens four and one places back.
- The evaluation prompt is the training format itself (`evaluation_prompt`), so it occurs in training.
- Every word and number is one token (`build_tokenizer`, word level).

Documents and thoughts are a pure function of (seed, index).

    docs = generate(num_docs=1000, seed=0)            # list[ToyDocument]
    write_corpus("toy.jsonl", docs)                   # raw schema: {"id", "text", "answers", "metadata"}
    write_corpus("toy_aug.jsonl", docs, with_thoughts=True)   # augmented schema (spec 2.6), true thoughts
    source = ToyThoughtSource(docs); source.thought(prefix, suffix)   # true thoughts of a chunk (tests, compare)
    warmstart = guessing_teacher_corpus(200, seed=1)   # the demo's warmstart set: the guessing teacher's thoughts
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bolt_jax.data.schema import augment_record, write_jsonl
from bolt_jax.runtime.atomic import atomic_write_text

TOY_WORLD_VERSION = 22  # bump when this module changes what it generates: prepared toy data is then rewritten
MODULUS = 7
# each operation is one word (one token): a thought copies it with one look-up, keyed by the clause's ordinal
OPS: dict[str, Callable[[int], int]] = {
    "up": lambda a: (a + 1) % MODULUS,
    "upup": lambda a: (a + 2) % MODULUS,
    "down": lambda a: (a - 1) % MODULUS,
    "downdown": lambda a: (a - 2) % MODULUS,
    "double": lambda a: (a * 2) % MODULUS,
    "triple": lambda a: (a * 3) % MODULUS,
}  # 6 operations x 7 values = 42 facts
# operations whose facts the base model's pretraining text never states: only thoughts teach them
NEW_OPS = ("downdown", "triple")
ORDINALS = ("first", "second", "third", "fourth")
NUM_STEPS = len(ORDINALS)  # 7 x 6^4 = 9,072 distinct questions: memorising answers cannot reach held-out ones
ANSWER_RE = re.compile(r"The answer is (\d+) \.")
QUESTION_RE = re.compile(r"start_\d+(?: , [a-z]+_[a-z]+)+ \.")
STEP_RE = re.compile(r" , ([a-z]+) ([a-z]+) gives (\d+)")
THOUGHT_RE = re.compile(r"start (\d+)((?: , [a-z]+ [a-z]+ gives \d+)+) \.")
SEPARATOR = "\n\n"  # ends every question: the paragraph boundary the chunker cuts at
FIRST_THOUGHT = ""  # the true thought of a chunk without an answer (the document's first question)


@dataclass(frozen=True)
class ToyProblem:
    question: str  # "start_4 , first_double , second_up , third_triple , fourth_downdown ."
    thought: str  # " start 4 , first double gives 1 , second up gives 2 , ..." (leading space: after <PRIOR>)
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


def make_question(rng: np.random.Generator, steps: int = NUM_STEPS, ops: Sequence[str] = tuple(OPS)) -> str:
    """A random start value and `steps` clauses, each operation drawn independently from `ops`; every clause is one
    word ("start_4 , first_double , second_up .")."""
    clauses = [f"start_{int(rng.integers(MODULUS))}"]
    names = list(ops)
    for ordinal, k in zip(ORDINALS, rng.integers(len(names), size=steps)):
        clauses.append(f"{ordinal}_{names[int(k)]}")
    return " , ".join(clauses) + " ."


def make_problem_question(rng: np.random.Generator) -> str:
    """A problem's question: NUM_STEPS clauses, exactly one of them a NEW_OP (its place and which one uniform), the
    others familiar operations. One unknown step per problem: a thought is right exactly when that fact is."""
    familiar = [op for op in OPS if op not in NEW_OPS]
    place = int(rng.integers(NUM_STEPS))
    ops = [NEW_OPS[int(rng.integers(len(NEW_OPS)))] if k == place else familiar[int(rng.integers(len(familiar)))]
           for k in range(NUM_STEPS)]
    clauses = [f"start_{int(rng.integers(MODULUS))}", *(f"{o}_{op}" for o, op in zip(ORDINALS, ops))]
    return " , ".join(clauses) + " ."


def question_clauses(question: str) -> tuple[int, list[tuple[str, str]]]:
    """(start value, [(ordinal, operation), ...]) of a question."""
    if not QUESTION_RE.fullmatch(question.strip()):
        raise ValueError(f"not a toy question: {question[:80]!r}")
    head, *clauses = question.strip().rstrip(" .").split(" , ")
    pairs = [tuple(c.split("_")) for c in clauses]
    for _, op in pairs:
        if op not in OPS:
            raise ValueError(f"not a toy operation: {op!r} in {question[:80]!r}")
    return int(head.removeprefix("start_")), pairs  # type: ignore[return-value]


def make_problem(rng: np.random.Generator) -> ToyProblem:
    """A chain of NUM_STEPS operations mod 7 from a random start, one of them new, and its true thought."""
    question = make_problem_question(rng)
    thought, answer = solve_question(question)
    return ToyProblem(question, thought, answer)


def guessing_teacher_corpus(num_docs: int, seed: int) -> list[ToyDocument]:
    """The warmstart set `seed`, written by the guessing teacher: it has never seen the NEW_OPS, so at the new step
    it writes a guess, carries on correctly from it, and the document states the answer its chain reached. Thought
    and answer agree, as in a consistent worked solution. Its guesses are spread evenly: the n-th time the corpus
    needs a new fact (operation, input) the teacher writes value (offset + n) mod 7, the offset random per fact, so
    every fact's guesses cover the 7 values equally (right one time in seven) and no wrong value is favoured; a
    wrong value that happened to be guessed more often than the truth would stay the warmstart model's belief, and
    the E-step could not find the right one."""
    rng = np.random.default_rng([seed, 7])
    offsets = {(op, v): int(rng.integers(MODULUS)) for op in NEW_OPS for v in range(MODULUS)}
    seen: dict[tuple[str, int], int] = {}
    docs = []

    def guess(op: str, value: int) -> int:
        if op not in NEW_OPS:
            return OPS[op](value)
        n = seen[(op, value)] = seen.get((op, value), -1) + 1
        return (offsets[(op, value)] + n) % MODULUS

    for index in range(num_docs):
        question = make_problem_question(np.random.default_rng([seed, index]))
        thought, answer = solve_question(question, guess)
        docs.append(ToyDocument(id=f"toy-{seed}-{index}", problems=[ToyProblem(question, thought, answer)]))
    return docs


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


CORPUS_KINDS = ("raw", "thoughts", "pretraining", "guessed_thoughts")


def write_toy_corpus(path: str | os.PathLike, kind: str, num_docs: int, seed: int) -> int:
    """One toy corpus: raw documents, documents with their true thoughts, or the base model's pretraining text."""
    if kind == "pretraining":
        return write_jsonl(path, (pretraining_record(seed, i) for i in range(num_docs)))
    if kind == "guessed_thoughts":  # the warmstart set: the guessing teacher's documents and thoughts
        return write_jsonl(path, (d.augmented_record() for d in guessing_teacher_corpus(num_docs, seed)))
    if kind not in CORPUS_KINDS:
        raise ValueError(f"toy corpus kind {kind!r}; choose one of {CORPUS_KINDS}")
    return write_corpus(path, generate(num_docs, seed=seed), with_thoughts=kind == "thoughts")


def write_toy_data(data_dir: str, corpora: dict[str, tuple[str, int, int]]) -> dict[str, str]:
    """Toy corpora `{name: (kind, num_docs, seed)}` as `<data_dir>/<name>.jsonl`, plus the word-level tokenizer
    (`paths["tokenizer"]`). Reused only when written by the same toy world with the same corpora (recorded in the
    COMPLETE marker, written last); otherwise rewritten, and the reader is told."""
    os.makedirs(data_dir, exist_ok=True)
    paths = {name: os.path.join(data_dir, f"{name}.jsonl") for name in corpora}
    paths["tokenizer"] = os.path.join(data_dir, "tokenizer")
    settings = {"toy_world": TOY_WORLD_VERSION, "corpora": {k: list(v) for k, v in corpora.items()}}
    done = os.path.join(data_dir, "COMPLETE")
    if os.path.exists(done):
        try:
            with open(done) as f:
                if json.load(f) == settings:
                    return paths
        except ValueError:
            pass
        print(f"toy data in {data_dir} was written with other settings: rewriting it")
        os.remove(done)
    build_tokenizer(paths["tokenizer"])
    for name, (kind, num_docs, seed) in corpora.items():
        write_toy_corpus(paths[name], kind, num_docs, seed)
    atomic_write_text(done, json.dumps(settings))
    return paths


def pretraining_record(seed: int, index: int) -> dict[str, Any]:
    """A raw document of the base model's pretraining text: what a base model knows before BoLT.

    Questions of two to four steps, their clauses spelled out after "in short :" in a random order (reading a
    question: which operation each ordinal has), and questions of one to three steps with the familiar operations
    only, worked out after "in short :" and answered ("start_4 , first_double , second_up ." -> "in short : start 4
    , first double gives 1 , second up gives 2 ." -> "The answer is 2 ."). So the base model reads questions, chains
    the 28 facts of the familiar operations and knows that an answer is where the worked chain ends (as TinyLlama
    knows some arithmetic, how to read, and that a solution's last line is its answer); it has never seen a fact of
    the NEW_OPS or a four-step chain. Every M-step starts from this base, so each one keeps knowing that an answer
    must follow from the thought, however mixed the E-step's chosen thoughts are: the importance weights stay able
    to tell a thought that reaches the stated answer from one that does not."""
    rng = np.random.default_rng([seed, index, 1])
    familiar = [op for op in OPS if op not in NEW_OPS]
    paragraphs = []
    for _ in range(int(rng.integers(2, 5))):
        if rng.random() < 0.3:
            question = make_question(rng, steps=int(rng.integers(2, NUM_STEPS + 1)))
            short = restatement(question, rng)
        else:
            question = make_question(rng, steps=int(rng.integers(1, NUM_STEPS)), ops=familiar)
            short, answer = solve_question(question)
            paragraphs += [question, f"in short : {short.strip()}", f"The answer is {answer} ."]
            continue
        paragraphs += [question, f"in short : {short}"]
    return {"id": f"toy-pretrain-{seed}-{index}", "text": SEPARATOR.join(paragraphs),
            "metadata": {"source": "bolt_jax.data.toy.pretraining_record"}}


def restatement(question: str, rng: np.random.Generator) -> str:
    """A question's clauses spelled out, in a random order ("start 2 , third up , first double , second down ."):
    which operation an ordinal has can only be read from the question, as a thought reads it."""
    value, clauses = question_clauses(question)
    spelled = [f"{ordinal} {op}" for ordinal, op in clauses]
    return " , ".join([f"start {value}", *(spelled[int(i)] for i in rng.permutation(len(spelled)))]) + " ."


# ------------------------------------------------------------------------------------------------ checking
def extract_answer(text: str) -> int | None:
    """The first "The answer is N ." in `text` (what a model states right after its thought), or None."""
    m = ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


def solve_steps(thought: str) -> int | None:
    """Check a thought's arithmetic (a start value, then ", ordinal operation gives result" steps mod 7, each from
    the previous result, ordinals in order); returns the last result if every step is right, else None."""
    m = THOUGHT_RE.fullmatch(thought.strip())
    if not m:
        return None
    value = int(m.group(1))
    for k, (label, word, result) in enumerate(STEP_RE.findall(m.group(2))):
        if k >= len(ORDINALS) or label != ORDINALS[k] or word not in OPS or OPS[word](value) != int(result):
            return None
        value = int(result)
    return value


def check_document(doc: ToyDocument) -> bool:
    """Every problem's stated answer follows from its thought (the corpus checks itself)."""
    return all(extract_answer(p.answer_sentence) == p.answer == solve_steps(p.thought) for p in doc.problems)


THOUGHT_PARTS = ("copy_start", "copy_op", "result", "new_result", "format")


def thought_parts(words: Sequence[str]) -> list[str]:
    """The part each word of a thought plays: copy_start (the number after "start"), copy_op (a question clause's
    operation, read from the question), result (after "gives": a fact of a familiar operation, which the base model
    knew), new_result (a fact of one of the NEW_OPS, which only thoughts teach), format (the rest: commas, ordinals,
    "gives"). A model that fails a part fails every thought; the report shows each part's log-probability."""
    out = []
    for j, w in enumerate(words):
        w, prev = w.strip(), words[j - 1].strip() if j else ""
        if prev == "gives":
            out.append("new_result" if j >= 2 and words[j - 2].strip() in NEW_OPS else "result")
        else:
            out.append("copy_start" if prev == "start" else "copy_op" if w in OPS else "format")
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
def solve_question(question: str, step: Callable[[str, int], int] | None = None) -> tuple[str, int]:
    """(true thought, answer) of a toy question: its clauses spelled out in order, each with "gives <result>", the
    previous result with the clause's operation applied (mod 7): "start_4 , first_double ." ->
    " start 4 , first double gives 1 .", 1. `step(op, value)` replaces the true operation (a teacher that guesses)."""
    value, clauses = question_clauses(question)
    steps = [f"start {value}"]
    for ordinal, op in clauses:
        value = step(op, value) if step else OPS[op](value)
        steps.append(f"{ordinal} {op} gives {value}")
    return " " + " , ".join(steps) + " .", value


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
    """Every word of the toy world, with and without a leading space, and the question's one-word clauses in the one
    form they occur in (start_N after a paragraph break, ordinal_op after a comma): the word-level vocabulary."""
    words = ["The", "answer", "is", "in", "short", ":", "start", "gives", *ORDINALS, *OPS,
             ".", ",", *(str(n) for n in range(MODULUS))]
    clauses = [*(f"start_{n}" for n in range(MODULUS)), *(f" {o}_{op}" for o in ORDINALS for op in OPS)]
    return [*words, *(" " + w for w in words), *clauses, SEPARATOR, "\n", " "]


def build_tokenizer(out_dir: str | os.PathLike) -> str:
    """A word-level tokenizer for the toy world (every word and number one token, the space before it included),
    with BOS/EOS and the four BoLT tokens appended last, saved as a Hugging Face tokenizer directory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from bolt_jax.data.formats import SPECIAL_TOKENS
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *vocabulary()])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # words keep the space before them; digits, punctuation and letters split apart, so a decoded sample
    # ("8" "." written without a space) re-encodes to the same tokens; a question clause ("second_up") is one word
    words = r" ?[A-Za-z]+_[A-Za-z0-9]+| ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\n\n|\s"
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(words), "isolated")
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    out_dir = str(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir)
    return out_dir
