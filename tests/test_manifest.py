"""Stages keyed by their settings (bolt_jax.workflows.manifest): skipped when current, refused or redone when a
setting, an input file or an upstream stage changed."""

import pytest

from bolt_jax.config import base_config
from bolt_jax.workflows.manifest import Manifest, StaleStageError, run_stage, settings_key, stage_settings


def _config(tmp_path, lr=1e-3, steps=10):
    from bolt_jax.train.loop import default_train_config
    from bolt_jax.train.optim import default_optim_config
    c = base_config()
    c.run_dir = str(tmp_path / "run")
    c.train, c.optim = default_train_config(), default_optim_config()
    c.optim.lr, c.train.steps = lr, steps
    return c


def _run(manifest, name, settings, calls):
    return run_stage(manifest, name, settings, lambda: calls.append(name) or {"out": name})


def test_current_stages_are_skipped_and_changes_refused_or_redone(tmp_path):
    calls: list[str] = []
    c = _config(tmp_path)
    sections = ("model", "optim", "train", "seed")
    m = Manifest(str(tmp_path))
    _, key_a = _run(m, "a", stage_settings(c, sections), calls)
    _run(m, "b", stage_settings(c, ("seed",), {"a": key_a}), calls)
    assert calls == ["a", "b"]
    # same settings (cadence and output places do not count): skipped, from a fresh Manifest of the same run
    c.train.log_every, c.run_dir = 7, str(tmp_path / "elsewhere")
    m = Manifest(str(tmp_path))
    assert _run(m, "a", stage_settings(c, sections), calls)[1] == key_a and calls == ["a", "b"]
    # a setting that changes the result: refused, naming it
    changed = _config(tmp_path, lr=2e-3)
    with pytest.raises(StaleStageError, match=r"stage a .*optim.lr: 0.001 -> 0.002"):
        _run(Manifest(str(tmp_path)), "a", stage_settings(changed, sections), calls)
    # rerun: a is redone, and b, whose upstream changed, too
    m = Manifest(str(tmp_path), on_change="rerun")
    _, key_a2 = _run(m, "a", stage_settings(changed, sections), calls)
    _run(m, "b", stage_settings(changed, ("seed",), {"a": key_a2}), calls)
    assert calls == ["a", "b", "a", "b"] and key_a2 != key_a


def test_input_file_size_is_part_of_the_key(tmp_path):
    c = _config(tmp_path)
    from bolt_jax.data.pipeline import default_data_config
    c.data = default_data_config()
    c.data.train_path = str(tmp_path / "corpus.jsonl")
    (tmp_path / "corpus.jsonl").write_text("{}\n")
    before = settings_key(stage_settings(c, ("data",)))
    (tmp_path / "corpus.jsonl").write_text("{}\n{}\n")
    assert settings_key(stage_settings(c, ("data",))) != before


def test_bad_on_change_is_refused(tmp_path):
    with pytest.raises(ValueError, match="on_change='maybe'"):
        Manifest(str(tmp_path), on_change="maybe")


def test_a_redone_stage_starts_clean_and_keeps_its_old_work(tmp_path):
    calls: list[str] = []
    work = tmp_path / "runs" / "a"
    work.mkdir(parents=True)
    (work / "checkpoint").write_text("old")
    m = Manifest(str(tmp_path), on_change="rerun")
    run_stage(m, "a", {"x": 1}, lambda: calls.append("a") or {}, work_dirs=[str(work)])
    assert (work / "checkpoint").exists()  # a first run resumes its own unfinished work
    run_stage(m, "a", {"x": 2}, lambda: calls.append("a") or {}, work_dirs=[str(work)])
    assert calls == ["a", "a"] and not work.exists()
    assert (tmp_path / "runs" / "a.stale-1" / "checkpoint").read_text() == "old"


def test_a_setting_added_later_counts_as_its_default(tmp_path):
    """A stage recorded before a key existed: the key at its default is no change, at another value it is."""
    calls: list[str] = []
    old = {"data.seq_len": 64}
    m = Manifest(str(tmp_path), defaults={"data.worker_count": 0, "data.shuffle_buffer_batches": 0})
    _run(m, "a", old, calls)
    m = Manifest(str(tmp_path), defaults={"data.worker_count": 0, "data.shuffle_buffer_batches": 0})
    _run(m, "a", {**old, "data.shuffle_buffer_batches": 0}, calls)
    assert calls == ["a"]
    with pytest.raises(StaleStageError, match=r"data.shuffle_buffer_batches: 0 -> 8"):
        _run(m, "a", {**old, "data.shuffle_buffer_batches": 8}, calls)


def test_a_trainer_run_from_before_a_new_data_key_still_resumes(tmp_path, monkeypatch):
    import json

    import bolt_jax.train.loop as loop
    from bolt_jax.data.pipeline import default_data_config
    c = _config(tmp_path)
    c.data = default_data_config()
    old = json.loads(c.to_json_best_effort())
    del old["data"]["shuffle_buffer_batches"]  # written by a version without the key
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(old))
    monkeypatch.setattr(loop, "finished_steps", lambda directory: [10])
    assert loop.settings_changes(c) == []
    c.data.shuffle_buffer_batches = 4
    assert loop.settings_changes(c) == ["data.shuffle_buffer_batches: 0 -> 4"]
