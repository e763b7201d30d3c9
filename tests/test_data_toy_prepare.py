"""The toy corpus (deterministic, self-checking, true thoughts for any chunking) and the `prepare` splits."""

import json
import os

import ml_collections
import numpy as np
import pytest

from bolt_jax.data import toy
from bolt_jax.data.chunking import ChunkingConfig, chunk_text
from bolt_jax.data.prepare import default_prepare_config, parse_slice, run_prepare, split_assignment
from bolt_jax.data.readers import iter_corpus
from tests.helpers import build_tokenizer


def test_toy_is_a_pure_function_of_seed_and_index():
    a, b = toy.generate(20, seed=1), toy.generate(20, seed=1)
    assert [d.text for d in a] == [d.text for d in b]
    assert [d.text for d in a] != [d.text for d in toy.generate(20, seed=2)]
    assert toy.generate_document(1, 7).text == a[7].text


def test_toy_answers_are_checkable_and_right():
    docs = toy.generate(300, seed=0)
    assert all(toy.check_document(d) for d in docs)
    p = toy.ToyProblem("Compute (2 + 3) * 4. The answer is 20.", "2 + 3 = 5. 5 * 4 = 20.", 20)
    assert toy.extract_answer(p.text) == 20 and toy.solve_steps(p.thought) == 20
    assert toy.solve_steps("2 + 3 = 6. 6 * 4 = 24.") is None  # a wrong step is caught


def test_toy_chunks_and_records_follow_the_schema(tmp_path):
    doc = toy.generate_document(0, 0)
    chunks = doc.chunks()
    assert "".join(c["suffix"] for c in chunks) == doc.text
    assert [c["latent"] for c in chunks] == [p.thought for p in doc.problems]
    path = tmp_path / "aug.jsonl"
    toy.write_corpus(path, [doc], with_thoughts=True)
    rec = json.loads(path.read_text())
    assert rec["num_chunks"] == len(doc.problems) and rec["chunks"][0]["latent"] == doc.problems[0].thought
    first = doc.problems[0]
    assert rec["combined_text_latent"].startswith(
        f"<|START_OF_LATENT|>{first.thought}<|END_OF_LATENT|>{first.text}")


def test_toy_vocabulary_is_small():
    words = set()
    for d in toy.generate(500, seed=0):
        words.update(d.text.split())
        words.update(t for p in d.problems for t in p.thought.split())
    assert len(words) < 600  # a tiny model's vocabulary; numbers are small


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
        source("N/A", "Something else. The answer is 3.")


# ---- prepare -----------------------------------------------------------------------------------------------


def test_split_slices_follow_the_original():
    assert parse_slice("13:17:20") == (13, 17, 20)
    with pytest.raises(ValueError, match="start:end:step"):
        parse_slice("13-17")
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


def test_prepare_writes_disjoint_deterministic_splits_with_manifests(tmp_path):
    tok = build_tokenizer(tmp_path / "tok")
    m1 = _prepare(tmp_path, "a", tokenizer_path=tok)
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


def test_prepare_reports_malformed_records(tmp_path):
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}."}) + "\n" for i in range(30)) + "{oops\n")
    m = _prepare(tmp_path, "c", source=str(src))
    assert m["num_source_records"] == 30 and m["read_report"]["num_malformed"] == 1
    assert m["read_report"]["malformed"][0].startswith(f"{src}:31")
    with pytest.raises(Exception, match="src.jsonl:31"):
        _prepare(tmp_path, "d", source=str(src), strict=True)
    assert np.load(os.path.join(m["splits"]["warmstart"]["dir"], "warmstart.chunk.00.jsonl.idx.npy")).shape[1] == 2
