"""The `report` workflow (bolt_jax.workflows.paper_report) on run directories made here: curves over trials against
training tokens (mean and SE computed by hand below), the last row of a repeated step winning, finetune points,
synthetic-data curves, the figures written."""

import json
import math

import ml_collections
import pytest

from bolt_jax.workflows.paper_report import default_report_config, run_report

KEY = "eval/fewshot/latent_hendrycks_math_cot_synthetic/accuracy"


def _write_run(path, rows):
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 1, "loss": 3.0}) + "\n")  # a training row: ignored
        for step, values in rows:
            f.write(json.dumps({"step": step, "eval/train_tokens": step * 100, **values}) + "\n")


def _trials(tmp_path):
    # two trials; iter_1's value at step 10 differs by trial; trial 0 repeated step 20 (a resumed run): last wins
    for t, bump in ((0, 0.0), (1, 0.2)):
        root = tmp_path / f"trial_{t}" / "runs"
        _write_run(root / "iter_1", [(10, {KEY: 0.1 + bump, "eval/elbo_4_per_token": -1.0 - bump}),
                                     (20, {KEY: 0.0, "eval/elbo_4_per_token": -9.0}),
                                     (20, {KEY: 0.3 + bump, "eval/elbo_4_per_token": -0.8})])
        _write_run(root / "raw_flops_match", [(10, {KEY: 0.05, "eval/val_nll_per_token": 1.5 + bump})])
        _write_run(root / "warmstart", [(5, {KEY: 0.02, "eval/elbo_4_per_token": -1.2})])
    return [str(tmp_path / "trial_0"), str(tmp_path / "trial_1")]


def test_curves_over_trials_finetune_points_and_figures(tmp_path):
    runs = _trials(tmp_path)
    ft = tmp_path / "ft_iter_1"
    ft.mkdir()
    (ft / "finetune_eval.json").write_text(json.dumps({"accuracy_mean": 0.4, "accuracy_se": 0.01,
                                                        "per_run": {"a": 0.39, "b": 0.41}}))
    synth = tmp_path / "latent_thoughts_trial_0"
    _write_run(synth, [(10, {KEY: 0.2}), (30, {KEY: 0.25})])
    c = ml_collections.ConfigDict({"run_dir": str(tmp_path / "out"), "report": default_report_config()})
    c.report.update(bootstrap_runs=",".join(runs), synth_runs=str(synth), finetune=f"iter_1={ft}")
    result = run_report(c)
    assert result["bootstrap_fewshot_key"] == KEY
    acc = result["bootstrap"]["fewshot"]["iter_1"]
    assert acc["tokens"] == [1000, 2000] and acc["trials"] == 2
    # by hand: mean of (0.1, 0.3) and of (0.3, 0.5); SE = |a - b| / 2 for two trials
    assert acc["mean"] == pytest.approx([0.2, 0.4]) and acc["se"] == pytest.approx([0.1, 0.1])
    elbo = result["bootstrap"]["neg_elbo_4"]["iter_1"]
    assert elbo["mean"] == pytest.approx([-1.1, -0.8]) and elbo["se"] == pytest.approx([0.1, 0.0])
    nll = result["bootstrap"]["val_nll"]["raw_flops_match"]
    assert nll["mean"] == pytest.approx([1.6]) and nll["se"] == pytest.approx([math.sqrt(0.02) / math.sqrt(2)])
    assert result["bootstrap"]["fewshot"]["warmstart"]["mean"] == pytest.approx([0.02])
    assert result["synth"]["latent_thoughts_trial_0"]["mean"] == pytest.approx([0.2, 0.25])
    assert result["synth"]["latent_thoughts_trial_0"]["se"] == [None, None]  # one run: no SE
    assert result["finetune"]["iter_1"] == {"accuracy": 0.4, "se": 0.01, "runs": 2}
    for name in ("bootstrap_curves.png", "synth_curves.png", "finetune.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "out" / "paper_report.md").read_text()
    assert "| fewshot | iter_1 | 2,000 | 0.4000 ± 0.1000 | 2 |" in md


def test_missing_runs_are_refused(tmp_path):
    c = ml_collections.ConfigDict({"run_dir": str(tmp_path), "report": default_report_config()})
    c.report.bootstrap_runs = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_report(c)
    c.report.update(bootstrap_runs="", finetune=f"iter_1={tmp_path}")
    with pytest.raises(FileNotFoundError, match="finetune_eval.json"):
        run_report(c)
