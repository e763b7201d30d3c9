"""`make demo` end to end at a few steps: the bootstrap workflow on toy data (and the raw-vs-thoughts comparison)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import repo_root

TINY = ["--config.train.progress_bar=False", "--config.train.log_every=2", "--config.train.eval_every=2",
        "--config.train.eval_batches=1", "--config.train.save_every=100"]


def run(tmp_path, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.run([sys.executable, "-m", "bolt_jax.main", "--config", "configs/demo.py",
                           f"--config.run_dir={tmp_path}", *TINY, *args],
                          cwd=repo_root(), env=env, capture_output=True, text=True, timeout=900)


SMALL = ["--config.bootstrap.pretrain_steps=4", "--config.bootstrap.warmstart_steps=4",
         "--config.bootstrap.iteration_steps=3", "--config.bootstrap.iterations=2",
         "--config.bootstrap.elbo_docs=2", "--config.estep.num_samples=2", "--config.estep.max_new_tokens=6",
         "--config.demo.num_pretrain_docs=60", "--config.demo.num_warmstart_docs=30",
         "--config.demo.num_bootstrap_docs=6", "--config.demo.num_validation_docs=8",
         "--config.bootstrap.toy_eval_problems=4"]


def test_bootstrap_demo_runs_end_to_end_and_resumes(tmp_path):
    args = SMALL
    r = run(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BoLT bootstrap summary" in r.stdout and "E-step 2: sample correct" in r.stdout
    # the console: a line at each stage's start and end; what each stage logs and prints is in its own log file
    assert "training summary" not in r.stdout and "bolt_jax.train: step" not in r.stderr
    assert "training summary" in (tmp_path / "logs" / "mstep_2.log").read_text()
    assert len((r.stdout + r.stderr).splitlines()) <= 80 and "    estep_1 done in" in r.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    expected = ["base", "warmstart", "estep_1", "mstep_1", "estep_2", "mstep_2", "raw_token_match",
                "raw_flops_match"]
    assert all(manifest[s]["status"] == "done" for s in expected)
    assert manifest["estep_2"]["outputs"]["chunks"] > 0
    assert manifest["fewshot_iter_2"]["outputs"]["latent_prompt"] is True
    assert manifest["fewshot_raw_flops_match"]["outputs"]["problems"] == 4
    assert (tmp_path / "report.md").exists() and (tmp_path / "bootstrap.png").read_bytes()[:4] == b"\x89PNG"
    # report.json: the schema other tools read; ELBO for thought models, NLL for raw ones, never both
    report = json.loads((tmp_path / "report.json").read_text())
    assert [it["iteration"] for it in report["iterations"]] == [1, 2]
    assert all({"sample_correct", "chosen_correct", "ess"} <= set(it) for it in report["iterations"])
    assert list(report["models"]) == ["base", "warmstart", "iter_1", "iter_2", "raw_token_match", "raw_flops_match"]
    for name, m in report["models"].items():
        assert {"heldout_accuracy", "heldout_accuracy_se", "neg_elbo_per_token", "nll_per_token"} <= set(m)
        thought_model = name == "warmstart" or name.startswith("iter_")
        assert (m["neg_elbo_per_token"] is not None) == thought_model
        assert (m["nll_per_token"] is not None) == (not thought_model)
        assert 0.0 <= m["heldout_accuracy"] <= 1.0
    assert {"sample_correct", "chosen_correct", "true_top", "log_q_true", "ess"} <= set(
        report["models"]["iter_2"]["posterior"])
    assert report["stage_seconds"]["estep_1"] > 0 and report["commit"] and report["config"]["seed"] == 0
    assert len(report["checks"]) == 6
    data = [json.loads(l) for l in open(tmp_path / "data" / "iter_1.jsonl")]
    assert len(data) == 6 and all(c["latent"] is not None for d in data for c in d["chunks"])
    # the M-step of iteration 2 trained from the base model on iteration 2's data
    cfg = json.loads((tmp_path / "runs" / "iter_2" / "config.json").read_text())
    assert cfg["train"]["init_checkpoint"].endswith("runs/base/model")
    assert cfg["data"]["train_path"].endswith("data/iter_2.jsonl")
    assert any((tmp_path / "xla_cache").iterdir())  # bootstrap.compilation_cache: the stages shared their programs
    # a rerun skips every finished stage
    again = run(tmp_path, *args)
    assert again.returncode == 0 and "=== bootstrap stage" not in again.stdout


@pytest.mark.slow  # 25 s; the compare workflow is the simpler one, its parts are tested elsewhere
def test_compare_workflow_plots(tmp_path):
    r = run(tmp_path, "--config.workflow=compare", "--config.train.steps=4", "--config.demo.num_train_docs=100",
            "--config.demo.num_validation_docs=10")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "val loss (raw)" in r.stdout
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_changed_setting_is_refused_or_redone_downstream(tmp_path):
    """A finished demo rerun with another iteration_steps: refused before anything runs, naming the key; with
    on_change=rerun the changed stage and everything after it run again, the stages before it are reused."""
    args = SMALL
    assert run(tmp_path, *args).returncode == 0
    changed = [a for a in args if "iteration_steps" not in a] + ["--config.bootstrap.iteration_steps=4"]
    refused = run(tmp_path, *changed)
    assert refused.returncode != 0 and "stage mstep_1" in refused.stderr and "train.steps: 3 -> 4" in refused.stderr
    assert "=== bootstrap stage" not in refused.stdout
    redone = run(tmp_path, *changed, "--config.bootstrap.on_change=rerun")
    assert redone.returncode == 0, redone.stderr[-3000:]
    ran = [line.split(": ")[1] for line in redone.stdout.splitlines() if line.startswith("=== bootstrap stage: ")]
    # (raw_token_match reruns only if its computed step count changed)
    assert ran[:3] == ["mstep_1", "estep_2", "mstep_2"] and "raw_flops_match" in ran and "base" not in ran
    assert "warmstart" not in ran and "estep_1" not in ran and "fewshot_base" not in ran
    assert (tmp_path / "runs" / "iter_1.stale-1").is_dir()  # the old M-step's run, kept aside, not continued
    assert json.loads((tmp_path / "manifest.json").read_text())["mstep_1"]["outputs"]["steps"] == 4


