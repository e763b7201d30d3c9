"""Evaluation during training (bolt_jax.eval.periodic): few-shot accuracy and NLL every `every` steps, the ELBO
every `elbo_every` steps and at the end, in metrics.jsonl against training tokens; the in-training ELBO against
the same ELBO computed afterwards from the exported checkpoint on disk (bolt_jax.eval.validation); a run killed
after an evaluated checkpoint resumes with every evaluation in place (slow)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bolt_jax.config import derive
from bolt_jax.data import toy
from tests.helpers import repo_root

GSM = "/work/shared/data/gsm8k/test.jsonl"


def _demo_config():
    spec = importlib.util.spec_from_file_location("demo_cfg", os.path.join(repo_root(), "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _config(tmp_path, **train_eval):
    from bolt_jax.eval.periodic import default_train_eval_config
    paths = toy.write_toy_data(str(tmp_path / "data"), {"train": ("thoughts", 40, 0), "validation": ("raw", 4, 1)})
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(open(GSM).readlines()[:2]))
    c = _demo_config()
    c.unlock()
    c.train_eval = default_train_eval_config()
    c.lock()
    return derive(c, {"workflow": "train", "run_dir": str(tmp_path / "run"), "train.steps": 6,
                      "train.save_every": 2, "train.eval_every": 0, "train.progress_bar": False,
                      "data.train_path": paths["train"], "data.validation_path": paths["validation"],
                      "data.tokenizer_path": paths["tokenizer"], "data.latent_type": "random",
                      "train_eval.every": 2, "train_eval.elbo_every": 3, "train_eval.gsm8k_path": str(gsm),
                      "train_eval.variants": "gsm8k_cot_alt,latent_gsm8k_cot_synthetic_alt",
                      "train_eval.max_new_tokens": 4, "train_eval.max_prompt_tokens": 200,
                      "train_eval.validation_docs": 2, "train_eval.elbo_samples": 2, "train_eval.elbo_docs": 2,
                      **{f"train_eval.{k}": v for k, v in train_eval.items()}})


def _eval_rows(run_dir):
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    return {r["step"]: r for r in rows if any(k.startswith("eval/") for k in r)}


def test_evaluations_run_on_schedule_and_the_elbo_matches_the_exported_model(tmp_path):
    from bolt_jax.eval.periodic import evaluators_for
    from bolt_jax.eval.validation import validation_elbo
    from bolt_jax.train.loop import train
    c = _config(tmp_path)
    summary = train(c, evaluators_for(c))
    rows = _eval_rows(c.run_dir)
    assert sorted(rows) == [2, 3, 4, 6]  # few-shot + NLL at 2, 4, 6; ELBO at 3 and 6 (and at the last step)
    for step in (2, 4, 6):
        assert {"eval/fewshot/gsm8k_cot_alt/accuracy", "eval/fewshot/latent_gsm8k_cot_synthetic_alt/accuracy",
                "eval/val_nll_per_token"} <= set(rows[step])
        assert rows[step]["eval/train_tokens"] == step * c.train.global_batch_size * c.data.seq_len
    assert "eval/elbo_2_per_token" in rows[3] and "eval/fewshot/gsm8k_cot_alt/accuracy" not in rows[3]
    # the oracle: the same ELBO, computed afterwards from the checkpoint written to disk
    after = validation_elbo(c, summary["model_dir"], c.data.validation_path, k=2, docs=2,
                            store_dir=str(tmp_path / "after"))
    assert rows[6]["eval/elbo_2_per_token"] == pytest.approx(after["elbo_2_per_token"], rel=1e-4)
    assert rows[6]["eval/elbo_1_per_token"] == pytest.approx(after["elbo_1_per_token"], rel=1e-4)


def test_bad_train_eval_settings_are_refused(tmp_path):
    from bolt_jax.eval.periodic import validate_train_eval_config
    c = _config(tmp_path)
    with pytest.raises(ValueError, match="config.train_eval.every=-1"):
        validate_train_eval_config(derive(c, {"train_eval.every": -1}))
    with pytest.raises(ValueError, match="unknown 'gsm9k'"):
        validate_train_eval_config(derive(c, {"train_eval.variants": "gsm9k"}))


@pytest.mark.slow
def test_a_killed_run_resumes_with_every_evaluation(tmp_path):
    """Killed (SIGKILL) right after the checkpoint of step 4, which was evaluated before it was written; the rerun
    evaluates step 6; together they hold the uninterrupted run's evaluations at 2, 4 and 6."""
    c = _config(tmp_path, elbo_every=0)
    config_path = tmp_path / "cfg.json"
    config_path.write_text(c.to_json_best_effort())
    script = ("import json, ml_collections, sys; from bolt_jax.workflows import run; "
              "run(ml_collections.ConfigDict(json.load(open(sys.argv[1]))))")
    env = dict(os.environ, JAX_PLATFORMS="cpu", BOLT_TEST_SIGKILL_AFTER_STEP="4")
    first = subprocess.run([sys.executable, "-c", script, str(config_path)], cwd=repo_root(), env=env,
                           capture_output=True, text=True, timeout=600)
    assert first.returncode != 0 and sorted(_eval_rows(c.run_dir)) == [2, 4]
    env.pop("BOLT_TEST_SIGKILL_AFTER_STEP")
    second = subprocess.run([sys.executable, "-c", script, str(config_path)], cwd=repo_root(), env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = _eval_rows(c.run_dir)
    straight = _config(tmp_path / "straight", elbo_every=0)
    from bolt_jax.eval.periodic import evaluators_for
    from bolt_jax.train.loop import train
    train(straight, evaluators_for(straight))
    expected = _eval_rows(straight.run_dir)
    assert sorted(resumed) == sorted(expected) == [2, 4, 6]
    for step in (2, 4, 6):
        assert resumed[step]["eval/val_nll_per_token"] == pytest.approx(expected[step]["eval/val_nll_per_token"],
                                                                        rel=1e-5)
