"""GSM8K (grade-school math, MIT) as a BoLT corpus: text that leaves out the reasoning its answer needs, with the
true latent thoughts known.

Each document is one problem, two paragraphs:

    question   "Question: Natalia sold clips to 48 of her friends in April, ... in April and May?\\n\\n"
    answer     "The answer is 72."
    thought    " Natalia sold 48/2 = 24 clips in May.\\nNatalia sold 48+24 = 72 clips altogether in April and May."
               (the worked solution, calculator annotations <<48/2=24>> removed; never in the raw text)

The raw text is the question and its final answer; the worked solution, which the text leaves out, is the answer
paragraph's latent thought. As in the toy world (bolt_jax.data.toy), the E-step cuts one chunk per paragraph
(estep.split_mode="paragraph", units_per_chunk=1), so the answer chunk's prior-format thought
(`<SoL><PRIOR> z <EoL> The answer is 72.`) comes right after the question (its prefix) and before the answer it
explains; the question chunk's true thought is "" (nothing to solve yet).

Splits (`write_gsm8k_data`): a small warmstart set with the true thoughts and a larger raw bootstrap set, disjoint
draws from GSM8K train; raw validation documents from GSM8K test, which is held out (accuracy is measured on it).

Checking (no model involved), used for the E-step diagnostics and held-out accuracy:
- the answer a text states: the first "The answer is N" (`stated_answer`), normalised as GSM8K's exact match
  (bolt_jax.eval.grading.normalize_number: no ',', '$', trailing '.');
- a thought is correct when it reaches the document's final answer (`thought_is_correct`): its final result, the
  number after its last '=' (its last number when it has no '='), equals the gold answer as a number ("$990.00"
  == "990"). GSM8K's own solutions end by computing the answer: 98.8% of the train set's true thoughts are graded
  correct this way (97.2% by the last number alone, which misses "120/24 = 5 hours to read 120 pages"). A thought
  that reaches the answer by a wrong route counts as correct; one that stops short, or ends elsewhere, does not;
- held-out accuracy (`answer_is_correct`): the first "The answer is N" the model states after its thought equals
  the gold answer as a number.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bolt_jax.data.formats import EOL, PRIOR, SOL
from bolt_jax.data.schema import augment_record, write_jsonl
from bolt_jax.eval import grading
from bolt_jax.runtime.atomic import atomic_write_text

GSM8K_CORPUS_VERSION = 1  # bump when this module changes what it writes: prepared data is then rewritten
SEPARATOR = "\n\n"  # ends the question: the paragraph boundary the chunker cuts at
QUESTION_PREFIX = "Question: "
NUMBER = r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?"
NUMBER_RE = re.compile(NUMBER)
RESULT_RE = re.compile(r"=\s*(" + NUMBER + ")")  # the result of a computation: the number right after '='
ANSWER_RE = re.compile(r"The answer is (" + NUMBER + ")")
CALCULATOR_RE = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, "<<48/2=24>>"
BLANK_LINES_RE = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class GSM8KProblem:
    id: str
    question: str  # one paragraph (blank lines inside the original question collapsed)
    thought: str  # " step one.\nstep two." (leading space: it follows <PRIOR>)
    answer: str  # the final answer as GSM8K writes it after '####'

    @property
    def question_paragraph(self) -> str:
        return f"{QUESTION_PREFIX}{self.question}{SEPARATOR}"

    @property
    def answer_sentence(self) -> str:
        return f"The answer is {self.answer}."

    def chunks(self) -> list[dict[str, str]]:
        """The two chunks {suffix, latent}: the question (thought "") and the answer (thought: the solution)."""
        return [{"suffix": self.question_paragraph, "latent": ""},
                {"suffix": self.answer_sentence, "latent": self.thought}]

    @property
    def text(self) -> str:
        return self.question_paragraph + self.answer_sentence

    def raw_record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "answers": [self.answer],
                "metadata": {"source": "bolt_jax.data.gsm8k"}}

    def augmented_record(self) -> dict[str, Any]:
        return augment_record(self.raw_record(), self.chunks())


def parse_solution(answer: str) -> tuple[str, str]:
    """(thought, final answer) of a GSM8K answer field: the worked solution before '####' without its calculator
    annotations, one step a line, a leading space; the text after '####'."""
    if "####" not in answer:
        raise ValueError(f"not a GSM8K answer (no '####'): {answer[-80:]!r}")
    solution, final = answer.rsplit("####", 1)
    lines = [" ".join(CALCULATOR_RE.sub("", line).split()) for line in solution.strip().splitlines()]
    return " " + "\n".join(line for line in lines if line), final.strip()


def make_problem(record: Mapping[str, Any], id_: str) -> GSM8KProblem:
    """One {question, answer} record of GSM8K as a problem."""
    thought, final = parse_solution(record["answer"])
    question = BLANK_LINES_RE.sub("\n", record["question"].strip())
    return GSM8KProblem(id_, question, thought, final)


def read_problems(path: str, indices: Sequence[int] | None = None) -> list[GSM8KProblem]:
    """The problems of a GSM8K JSONL file (all, or the given line indices, in that order); ids "<file>-<line>"."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    name = os.path.splitext(os.path.basename(path))[0]
    order = range(len(records)) if indices is None else indices
    return [make_problem(records[i], f"gsm8k-{name}-{i}") for i in order]


def write_gsm8k_data(data_dir: str, *, train_path: str, test_path: str, num_warmstart: int, num_bootstrap: int,
                     num_validation: int, seed: int) -> dict[str, str]:
    """`<data_dir>/{warmstart,bootstrap,validation}.jsonl`: warmstart (augmented, true thoughts) and bootstrap (raw)
    are disjoint draws (one seeded permutation) from GSM8K train; validation the first `num_validation` problems
    of GSM8K test, raw. Reused only when written by this module version from the same inputs and sizes (recorded
    in the COMPLETE marker, written last)."""
    with open(train_path) as f:
        num_train = sum(1 for line in f if line.strip())
    if num_warmstart + num_bootstrap > num_train:
        raise ValueError(f"{num_warmstart} warmstart + {num_bootstrap} bootstrap problems > the {num_train} of "
                         f"{train_path}")
    paths = {name: os.path.join(data_dir, f"{name}.jsonl") for name in ("warmstart", "bootstrap", "validation")}
    settings = {"version": GSM8K_CORPUS_VERSION, "train": os.path.abspath(train_path), "train_size": num_train,
                "test": os.path.abspath(test_path), "test_size": os.path.getsize(test_path), "seed": seed,
                "sizes": [num_warmstart, num_bootstrap, num_validation]}
    done = os.path.join(data_dir, "COMPLETE")
    if os.path.exists(done):
        with open(done) as f:
            if f.read() == json.dumps(settings):
                return paths
        print(f"GSM8K data in {data_dir} was written with other settings: rewriting it")
        os.remove(done)
    os.makedirs(data_dir, exist_ok=True)
    order = np.random.default_rng(seed).permutation(num_train).tolist()
    warm = read_problems(train_path, order[:num_warmstart])
    boot = read_problems(train_path, order[num_warmstart:num_warmstart + num_bootstrap])
    val = read_problems(test_path, range(num_validation))
    write_jsonl(paths["warmstart"], (p.augmented_record() for p in warm))
    write_jsonl(paths["bootstrap"], (p.raw_record() for p in boot))
    write_jsonl(paths["validation"], (p.raw_record() for p in val))
    atomic_write_text(done, json.dumps(settings))
    return paths


# ------------------------------------------------------------------------------------------------ checking
def stated_answer(text: str) -> str | None:
    """The first "The answer is N" in `text`, normalised (grading.normalize_number), or None."""
    m = ANSWER_RE.search(text)
    return grading.normalize_number(m.group(1)) if m else None


def to_number(text: str | None) -> float | None:
    """A GSM8K answer as a number: normalize_number (no ',', '$', trailing '.'), then float ("990.00" == "990")."""
    text = grading.normalize_number(text)
    try:
        return float(text) if text else None
    except ValueError:
        return None


def thought_answer(thought: str) -> float | None:
    """The answer a thought reaches: the result of its last computation, the number after its last '=' (GSM8K's
    solutions end by computing the answer), else its last number; None without a number."""
    results = RESULT_RE.findall(thought)
    if results:
        return to_number(results[-1])
    numbers = NUMBER_RE.findall(thought)
    return to_number(numbers[-1]) if numbers else None


def thought_is_correct(thought: str, gold: str) -> bool:
    """The thought reaches the gold final answer (thought_answer equals it as a number)."""
    reached = thought_answer(thought)
    return reached is not None and reached == to_number(gold)


def answer_is_correct(generated: str, gold: str) -> bool:
    """Held-out grading: the answer the model states after the evaluation prompt equals the gold one as a number."""
    stated = to_number(evaluation_answer(generated))
    return stated is not None and stated == to_number(gold)


def evaluation_prompt(question: str, latent: bool) -> str:
    """The zero-shot prompt in the training format itself, the document up to the answer: latent (prior format,
    the question's empty thought first) `<SoL><PRIOR><EoL>Question: q\\n\\n<SoL><PRIOR>`, so the model writes its
    thought, <EoL>, then the answer; raw `Question: q\\n\\n`, so the model states the answer directly."""
    paragraph = QUESTION_PREFIX + BLANK_LINES_RE.sub("\n", question.strip()) + SEPARATOR
    return f"{SOL}{PRIOR}{EOL}{paragraph}{SOL}{PRIOR}" if latent else paragraph


def evaluation_answer(generated: str) -> str | None:
    """The answer a model states after the evaluation prompt: the first "The answer is N" after its thought (the
    text after the first <EoL>, all of it for a raw model's output)."""
    return stated_answer(grading.after_latent(generated))


def chunk_gold(chunks) -> dict[str, str | None]:
    """chunk_id -> the final answer an E-step chunk (bolt_jax.estep.run.Chunk) states in its suffix, or None (the
    question chunk: nothing to solve yet). Works for any chunking of GSM8K documents."""
    return {c.chunk_id: stated_answer(c.suffix) for c in chunks}


def estep_correctness(store_rows: Sequence[dict], chunks) -> dict[str, float]:
    """Over the chunks that state an answer: the share of the E-step's K samples, and of its chosen (resampled)
    thought, that reach the chunk's final answer (thought_is_correct), with bootstrap SEs; the mean ESS."""
    from bolt_jax.eval.fewshot import bootstrap_se
    gold = chunk_gold(chunks)
    sample, chosen, ess = [], [], []
    for row in store_rows:
        answer = gold.get(row["chunk_id"])
        if answer is None:
            continue
        ok = [thought_is_correct(z or "", answer) for z in row["latents"]]
        sample.append(float(np.mean(ok)))
        chosen.append(float(ok[row["chosen"]]))
        ess.append(float(row["ess"]))
    return {"sample_correct": float(np.mean(sample)) if sample else math.nan,
            "sample_correct_se": bootstrap_se(sample),
            "chosen_correct": float(np.mean(chosen)) if chosen else math.nan,
            "chosen_correct_se": bootstrap_se(chosen), "ess": float(np.mean(ess)) if ess else math.nan,
            "answer_chunks": len(chosen)}
