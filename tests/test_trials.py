"""The paper's trials (spec 5.6, `bootstrap.reuse_estep_from`): trial 1 retrains only the M-steps and baselines,
with its own seed, on trial 0's E-step data; the orchestration checked with every stage's work replaced by a
recorder (the stages themselves are tested in test_demo.py)."""

import json
import os

import pytest

import bolt_jax.workflows.bootstrap as bootstrap
from bolt_jax.config import derive
from bolt_jax.workflows.manifest import StaleStageError


@pytest.fixture
def recorder(monkeypatch, tmp_path):
    """Every stage's work replaced: trainings and E-steps append (run_dir, what) to `calls` and write nothing
    but their recorded outputs."""
    calls: list[tuple[str, str, dict]] = []

    def train_stage(c):
        calls.append((c.run_dir, "train", {"seed": c.seed, "data": c.data.train_path, "init": c.train.init_checkpoint}))
        return {"model_dir": os.path.join(c.run_dir, "model"), "run_dir": c.run_dir, "steps": c.train.steps}

    def estep_stage(config, c, i):
        calls.append((config.run_dir, "estep", {"iteration": i, "checkpoint": c.estep.checkpoint}))
        return {"output_path": c.estep.output_path, "chunks": 1}

    monkeypatch.setattr(bootstrap, "train_stage", train_stage)
    monkeypatch.setattr(bootstrap, "estep_stage", estep_stage)
    monkeypatch.setattr(bootstrap, "count_tokens", lambda *a, **k: 1.0)
    monkeypatch.setattr(bootstrap, "evaluate_models", lambda *a, **k: {})
    monkeypatch.setattr(bootstrap, "write_report", lambda *a, **k: {})
    return calls


def _config(tmp_path, trial: int, iterations: int = 2, reuse: str | None = None):
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(os.path.dirname(__file__), "..", "configs",
                                                                       "bolt_bootstrap_fixed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(str(trial))
    corpus = tmp_path / "bootstrap.jsonl"
    corpus.write_text('{"text": "x"}\n')
    changes = {"run_dir": str(tmp_path / f"trial_{trial}"), "bootstrap.iterations": iterations,
               "bootstrap.bootstrap_path": str(corpus), "bootstrap.warmstart_path": str(corpus),
               "data.validation_path": ""}
    if reuse is not None:
        changes["bootstrap.reuse_estep_from"] = reuse
    return derive(c, changes)


def test_trial_1_trains_its_msteps_on_trial_0s_estep_data(recorder, tmp_path):
    trial0 = _config(tmp_path, 0)
    assert _config(tmp_path, 1).bootstrap.reuse_estep_from.endswith("trial_0")  # the config file's default
    bootstrap.run_bootstrap(trial0)
    assert [w for _, w, _ in recorder].count("estep") == 2
    recorder.clear()
    trial1 = _config(tmp_path, 1, reuse=trial0.run_dir)
    bootstrap.run_bootstrap(trial1)
    assert all(w == "train" for _, w, _ in recorder)  # no E-step and no warmstart ran in trial 1
    runs = {os.path.basename(d): info for d, _, info in recorder}
    assert sorted(runs) == ["iter_1", "iter_2", "raw_flops_match", "raw_token_match"]
    assert all(info["seed"] == 43 for info in runs.values())
    assert runs["iter_1"]["data"] == os.path.join(trial0.run_dir, "data", "iter_1.jsonl")
    assert runs["iter_2"]["data"] == os.path.join(trial0.run_dir, "data", "iter_2.jsonl")
    manifest = json.load(open(os.path.join(trial1.run_dir, "manifest.json")))
    assert {manifest[s].get("adopted_from") for s in ("warmstart", "estep_1", "estep_2")} == {trial0.run_dir}
    assert "adopted_from" not in manifest["mstep_1"]
    # a rerun skips everything
    recorder.clear()
    bootstrap.run_bootstrap(trial1)
    assert recorder == []


def test_a_trial_stops_where_trial_0_has_not_finished_and_resumes_later(recorder, tmp_path):
    trial0 = _config(tmp_path, 0, iterations=1)
    bootstrap.run_bootstrap(trial0)
    trial1 = _config(tmp_path, 1, iterations=2, reuse=trial0.run_dir)
    with pytest.raises(ValueError, match="stage estep_2 is not finished there yet"):
        bootstrap.run_bootstrap(trial1)
    assert os.path.basename(recorder[-1][0]) == "iter_1"  # mstep_1 was done and is kept
    bootstrap.run_bootstrap(_config(tmp_path, 0, iterations=2))  # trial 0 goes on
    recorder.clear()
    bootstrap.run_bootstrap(trial1)
    assert [os.path.basename(d) for d, _, _ in recorder] == ["iter_2", "raw_token_match", "raw_flops_match"]


def test_settings_that_differ_from_trial_0_are_refused(recorder, tmp_path):
    trial0 = _config(tmp_path, 0, iterations=1)
    bootstrap.run_bootstrap(trial0)
    other = derive(_config(tmp_path, 1, iterations=1, reuse=trial0.run_dir), {"estep.num_samples": 8})
    with pytest.raises(StaleStageError, match=r"estep_1 .*estep.num_samples: 4 -> 8"):
        bootstrap.run_bootstrap(other)
    with pytest.raises(FileNotFoundError, match="no bootstrap run there"):
        bootstrap.run_bootstrap(_config(tmp_path, 1, reuse=str(tmp_path / "nowhere")))
