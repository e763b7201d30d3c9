"""The toy corpus (deterministic, self-checking, true thoughts for any chunking) and the `prepare` splits."""

import json
import logging
import os
import re

import ml_collections
import numpy as np
import pytest

from bolt_jax.data import toy
from bolt_jax.data.chunking import ChunkingConfig, chunk_text
from bolt_jax.data.prepare import default_prepare_config, parse_split_slice, run_prepare, split_assignment
from bolt_jax.data.readers import iter_corpus
from tests.helpers import build_tokenizer


def test_toy_is_a_pure_function_of_seed_and_index():
    a, b = toy.generate(20, seed=1), toy.generate(20, seed=1)
    assert [d.text for d in a] == [d.text for d in b]
    assert [d.text for d in a] != [d.text for d in toy.generate(20, seed=2)]
    assert toy.generate_document(1, 7).text == a[7].text


def _fold(question: str) -> list[int]:
    """An independent oracle: parse the question's words and fold the operations mod 7; every intermediate value."""
    words = question.rstrip(" .").split(" , ")
    values = [int(words[0].split("_")[1])]
    for clause in words[1:]:
        _, word = clause.split("_")
        a = values[-1]
        values.append({"up": a + 1, "upup": a + 2, "down": a - 1, "downdown": a - 2, "double": 2 * a,
                       "triple": 3 * a}[word] % 7)
    return values


def test_toy_thoughts_are_arithmetically_right():
    docs = toy.generate(500, seed=0)
    assert all(toy.check_document(d) for d in docs)
    questions = set()
    for p in (p for d in docs for p in d.problems):
        values = _fold(p.question)
        assert p.answer == values[-1] == toy.solve_steps(p.thought)
        # the thought is the question spelled out, with every intermediate result after its clause
        assert [int(x) for x in re.findall(r"gives (\d)", p.thought)] == values[1:]
        assert re.sub(r" gives \d", "", p.thought).strip().replace(" ", "_").replace("_,_", " , ").replace(
            "_.", " .") == p.question
        questions.add(p.question)
    assert len(questions) > 430  # 3,584 possible questions: 500 documents seldom repeat one
    p = toy.ToyProblem("start_3 , first_upup , second_double .", " start 3 , first upup gives 5 , second double "
                       "gives 3 .", 3)
    assert toy.solve_steps(p.thought) == 3 and toy.solve_question(p.question) == (p.thought, 3)  # mod 7
    assert toy.solve_steps(" start 3 , first upup gives 5 , second double gives 10 .") is None  # a wrong step
    assert toy.solve_steps(" start 3 , first upup gives 4 , second double gives 1 .") is None  # a broken chain
    assert toy.solve_steps(" start 3 , first upup gives 5 , third double gives 3 .") is None  # out of order
    assert toy.thought_is_correct(" start 3 ,  first upup gives 5 , second double gives 3 .", p.thought)
    assert not toy.thought_is_correct(" start 3 , first upup gives 5 .", p.thought)


def test_every_problem_has_exactly_one_new_operation():
    counts = [sum(op in toy.NEW_OPS for _, op in toy.question_clauses(d.problems[0].question)[1])
              for d in toy.generate(500, seed=4)]
    assert counts == [1] * 500
    places = {[op in toy.NEW_OPS for _, op in toy.question_clauses(d.problems[0].question)[1]].index(True)
              for d in toy.generate(200, seed=5)}
    assert places == {0, 1, 2, 3}


def test_the_guessing_teacher_spreads_its_guesses_evenly_and_keeps_its_chain_consistent():
    """The warmstart set: familiar steps right (folded by hand here), each new fact's guesses covering the 7 values
    evenly (so no wrong value is favoured; right one time in seven), each later step computed from the guess, the
    stated answer the chain's end."""
    ops = {"up": lambda a: a + 1, "upup": lambda a: a + 2, "down": lambda a: a - 1, "double": lambda a: 2 * a}
    guesses: dict[tuple[str, int], list[int]] = {}
    docs = toy.guessing_teacher_corpus(1400, seed=3)
    for d in docs:
        p = d.problems[0]
        start, clauses = toy.question_clauses(p.question)
        results = [int(x) for x in re.findall(r"gives (\d)", p.thought)]
        prev = start
        for (_, op), got in zip(clauses, results):
            if op in toy.NEW_OPS:
                guesses.setdefault((op, prev), []).append(got)
            else:
                assert got == ops[op](prev) % 7
            prev = got
        assert p.answer == results[-1] and d.text.endswith(f"The answer is {results[-1]} .")
    assert len(guesses) == 14 and sum(map(len, guesses.values())) == 1400
    right = 0
    for (op, value), got in guesses.items():
        counts = np.bincount(got, minlength=7)
        assert counts.max() - counts.min() <= 1  # cycled through the 7 values: as even as the count allows
        right += counts[{"triple": 3 * value, "downdown": value - 2}[op] % 7]
    assert abs(right / 1400 - 1 / 7) < 0.01
    assert [d.text for d in toy.guessing_teacher_corpus(50, seed=3)] == [d.text for d in docs[:50]]  # a prefix
    aug = docs[0].augmented_record()
    assert aug["chunks"][1]["latent"] == docs[0].problems[0].thought


def test_toy_chunks_put_the_thought_between_question_and_answer(tmp_path):
    assert all(len(d.problems) == 1 for d in toy.generate(20, seed=0))  # the demo's documents: one problem each
    doc = next(d for d in toy.generate(20, seed=0, max_problems=2) if len(d.problems) == 2)
    chunks = doc.chunks()
    assert "".join(c["suffix"] for c in chunks) == doc.text
    assert [c["latent"] for c in chunks] == ["", doc.problems[0].thought, "", doc.problems[1].thought]
    assert chunks[0]["suffix"] == doc.problems[0].question + "\n\n"
    assert chunks[1]["suffix"].startswith(f"The answer is {doc.problems[0].answer} .")
    path = tmp_path / "aug.jsonl"
    toy.write_corpus(path, [doc], with_thoughts=True)
    assert json.loads(path.read_text())["num_chunks"] == 4
    # the paragraph chunker finds exactly these chunks (the demo's E-step setting)
    pairs = chunk_text(doc.text, ChunkingConfig.estep(split_mode="paragraph", units_per_chunk=1,
                                                      random_chunking=False))
    assert [p.suffix for p in pairs] == [c["suffix"] for c in chunks]


def test_toy_tokenizer_is_word_level_and_round_trips(tmp_path):
    from bolt_jax.data.formats import format_document
    from bolt_jax.data.tokenizer import load_tokenizer
    tok = load_tokenizer(toy.build_tokenizer(tmp_path / "tok"))
    assert tok.vocab_size < 128
    for d in toy.generate(50, seed=2):
        text = "".join(p.text for p in format_document(d.augmented_record(), "random", np.random.default_rng(0)))
        ids = tok.encode(text)
        assert tok.decode(ids) == text and tok.hf.unk_token_id not in ids
        for p in d.problems:  # every number is one token
            assert len(tok.encode(f" {p.answer}")) == 1
    # a decoded sample written without spaces re-encodes to the same tokens
    assert tok.decode(tok.encode("gives6.")) == "gives6." and len(tok.encode("gives6.")) == 3


def test_pretraining_text_teaches_reading_and_familiar_chains_but_never_a_new_fact():
    texts = [toy.pretraining_record(0, i)["text"] for i in range(600)]
    restated, facts, answered = 0, set(), 0
    for t in texts:
        paragraphs = t.split("\n\n")
        groups, i = [], 0
        while i < len(paragraphs):  # question, "in short", and for a worked chain its answer
            n = 3 if i + 2 < len(paragraphs) and paragraphs[i + 2].startswith("The answer is") else 2
            groups.append(paragraphs[i:i + n])
            i += n
        for q, short, *answer in groups:
            if answer:  # only a worked familiar chain is answered, with the value its chain ends at
                assert "gives" in short and answer[0] == f"The answer is {_fold(q)[-1]} ."
                answered += 1
            assert toy.QUESTION_RE.fullmatch(q)
            head, *clauses = q.rstrip(" .").replace("_", " ").split(" , ")
            ops = [c.split()[1] for c in clauses]
            values = _fold(q)
            if "gives" not in short:  # a question of several steps: its clauses spelled out in some order
                assert len(clauses) > 1 and short.startswith(f"in short : {head} , ")
                assert sorted(short.removeprefix("in short : ").rstrip(" .").split(" , ")[1:]) == sorted(clauses)
                restated += 1
            else:  # worked out, one to three steps of the familiar operations, checked by an independent oracle
                assert 1 <= len(clauses) < toy.NUM_STEPS and not set(ops) & set(toy.NEW_OPS)
                assert short == "in short : " + " , ".join(
                    [head] + [f"{c} gives {v}" for c, v in zip(clauses, values[1:])]) + " ."
                facts |= {(v, op) for v, op in zip(values, ops)}
    assert restated > 100 and len(facts) == 7 * (len(toy.OPS) - len(toy.NEW_OPS))  # every familiar fact, no other
    assert answered > 500


def test_evaluation_prompt_is_the_training_format():
    from bolt_jax.data.formats import EOL, PRIOR, SOL, format_prior
    docs = toy.generate(10, seed=4)
    shots, q = docs[0].problems, docs[1].problems[0]
    trained = "".join(p.text for p in format_prior(toy.ToyDocument("x", [*shots, q]).augmented_record()))
    prompt = toy.evaluation_prompt(q.question, shots, latent=True)
    assert trained.startswith(prompt) and prompt.endswith(f"{q.question}\n\n{SOL}{PRIOR}")
    assert trained[len(prompt):] == f"{q.thought}{EOL}{q.answer_sentence}"
    raw = toy.evaluation_prompt(q.question, shots, latent=False)
    assert toy.ToyDocument("x", [*shots, q]).text == raw + q.answer_sentence
    assert toy.evaluation_answer(f"{q.thought}{EOL}The answer is 6 .\n\nstart 1 , first_up .") == 6


@pytest.mark.parametrize("cfg", [ChunkingConfig(units_per_chunk=2), ChunkingConfig.estep(units_per_chunk=3),
                                 ChunkingConfig.elbo(units_per_chunk=4)])
def test_thought_source_gives_the_true_steps_for_any_chunking(cfg):
    docs = toy.generate(40, seed=3)
    source = toy.ToyThoughtSource(docs)
    for d in docs:
        pairs = chunk_text(d.text, cfg)
        got = " ".join(t for t in (source(p.prefix, p.suffix) for p in pairs) if t)
        assert got == " ".join(p.thought for p in d.problems)  # every problem's steps once, in order
    with pytest.raises(KeyError):
        source("N/A", "Something else. The answer is 3 .")


# ---- prepare -----------------------------------------------------------------------------------------------


def test_split_slices_follow_the_original():
    assert parse_split_slice("13:17:20") == (13, 17, 20)
    with pytest.raises(ValueError, match="start:end:step"):
        parse_split_slice("13-17")
    s = split_assignment(4000, seed=0, shuffle=False, validation_slice="0:1:1000", warmstart_slice="0:1:20",
                         bootstrap_slice="13:17:20")
    assert s["validation"].tolist() == [0, 1000, 2000, 3000]  # every 1000th line
    train = [i for i in range(4000) if i % 1000]
    assert s["train"].tolist() == train
    assert s["warmstart"].tolist() == [train[t] for t in range(len(train)) if t % 20 == 0]
    assert s["bootstrap"].tolist() == [train[t] for t in range(len(train)) if 13 <= t % 20 < 17]


def _prepare(tmp_path, name, **kw):
    c = ml_collections.ConfigDict({"prepare": default_prepare_config()})
    settings = dict(source="toy:400:1", output_dir=str(tmp_path / name), validation_slice="0:1:10",
                    warmstart_slice="0:1:4", bootstrap_slice="2:4:4")
    c.prepare.update({**settings, **kw})
    return run_prepare(c)


def test_prepare_writes_disjoint_deterministic_splits_with_manifests(tmp_path, capsys, caplog, monkeypatch):
    tok = build_tokenizer(tmp_path / "tok")
    monkeypatch.setenv("BOLT_PROGRESS", "plain")
    caplog.set_level(logging.INFO, logger="bolt_jax.progress")
    m1 = _prepare(tmp_path, "a", tokenizer_path=tok)
    # the console says why the splits hold 310 of the 400 records, and ends with the counts and where they went
    out = capsys.readouterr().out
    assert ("400 records;" in out and "validation = records 0:1:10 (40)" in out and "(90)" in out
            and "(180)" in out and "the other 90 are train records in no written split" in out)
    assert re.fullmatch(r"prepare: wrote validation 40, warmstart 90, bootstrap 180 records \(of 400 read\) in "
                        rf"\d+\.\d s -> {re.escape(str(tmp_path / 'a'))}", out.splitlines()[-1]), out
    progress = [r.getMessage() for r in caplog.records if r.name == "bolt_jax.progress"]
    assert progress[0] == "prepare 0/310 record: started" and len(progress) > 3
    assert progress[-1].startswith("prepare 310/310 (100%) | bootstrap | ") and "record/s" in progress[-1]
    m2 = _prepare(tmp_path, "b", tokenizer_path=tok)
    assert {k: v["sha256"] for k, v in m1["splits"].items()} == {k: v["sha256"] for k, v in m2["splits"].items()}
    counts = {k: v["num_samples"] for k, v in m1["splits"].items()}
    assert counts == {"validation": 40, "warmstart": 90, "bootstrap": 180}
    ids = {}
    for split, info in m1["splits"].items():
        files = [f for f in os.listdir(info["dir"]) if f.endswith(".jsonl")]
        assert files == (["validation.val.jsonl"] if split == "validation" else [f"{split}.chunk.00.jsonl"])
        ids[split] = {r["id"] for r in iter_corpus(info["dir"])}
        man = json.load(open(os.path.join(info["dir"], "manifest.json")))
        assert man["stats"]["num_samples"] == counts[split] and man["stats"]["total_tokens"] > 0
        assert man["sha256"] == info["sha256"] and man["source"] == "toy:400:1"
    assert not ids["validation"] & ids["warmstart"] and not ids["validation"] & ids["bootstrap"]
    assert not ids["warmstart"] & ids["bootstrap"]
    with pytest.raises(FileExistsError, match="overwrite"):
        _prepare(tmp_path, "a")
    m3 = _prepare(tmp_path, "e", source="toy_thoughts:400:1")  # same documents, with their true thoughts
    aug = list(iter_corpus(m3["splits"]["warmstart"]["dir"]))
    assert {r["id"] for r in aug} == ids["warmstart"] and all(r["num_chunks"] == len(r["chunks"]) for r in aug)


def test_prepare_reports_malformed_records(tmp_path, capsys):
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}."}) + "\n" for i in range(30)) + "{oops\n")
    m = _prepare(tmp_path, "c", source=str(src))
    assert m["num_source_records"] == 30 and m["read_report"]["num_malformed"] == 1
    assert "records (of 30 read, 1 malformed skipped) in" in capsys.readouterr().out.splitlines()[-1]
    assert m["read_report"]["malformed"][0].startswith(f"{src}:31")
    with pytest.raises(Exception, match="src.jsonl:31"):
        _prepare(tmp_path, "d", source=str(src), strict=True)
    assert np.load(os.path.join(m["splits"]["warmstart"]["dir"], "warmstart.chunk.00.jsonl.idx.npy")).shape[1] == 2


def test_prepare_shows_its_progress_while_indexing_a_real_source(tmp_path, caplog, monkeypatch):
    """Indexing a JSONL source is a pass over the whole corpus (FineMath-4+: tens of GB): prepare shows it, in MiB
    read; the training pipeline opens the same files quietly."""
    from bolt_jax.data.readers import open_corpus
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": "x" * 5000 + f" doc {i}."}) + "\n" for i in range(600)))  # 2.9 MiB
    monkeypatch.setenv("BOLT_PROGRESS", "plain")
    caplog.set_level(logging.INFO, logger="bolt_jax.progress")
    _prepare(tmp_path, "c", source=str(src))
    index = [r.getMessage() for r in caplog.records if r.getMessage().startswith("index ")]
    assert index[0] == "index 0/3 MiB: started" and index[-1].startswith("index 3/3 (100%)"), index
    caplog.clear()
    assert len(open_corpus(str(src))) == 600
    assert not [r for r in caplog.records if r.getMessage().startswith("index ")]


def test_prepare_command_line_takes_bare_booleans_and_documents_every_flag(tmp_path, capsys):
    from bolt_jax.data.prepare import build_parser, main
    help_text = " ".join(build_parser().format_help().split())  # argparse wraps lines
    assert "--overwrite [BOOL]" in help_text and "replace a prepared dataset already in output_dir" in help_text
    assert "the original's validation" in help_text
    out = str(tmp_path / "p")
    main(["--source", "toy:30:0", "--output_dir", out])
    with pytest.raises(SystemExit) as stop:
        main(["--source", "toy:30:0", "--output_dir", out])
    assert stop.value.code == 2 and "rerun with --overwrite=True" in capsys.readouterr().err
    main(["--source", "toy:30:0", "--output_dir", out, "--overwrite", "--shuffle=false"])
    args = build_parser().parse_args(["--overwrite", "--strict=1", "--write_train", "no"])
    assert (args.overwrite, args.strict, args.write_train) == (True, True, False)
