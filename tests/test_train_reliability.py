"""The trainer never checkpoints or resumes non-finite values, and never resumes a run_dir under other settings.

Non-finite updates come from real settings, not mocks: a learning rate so large that its product with the update
overflows (the warmup's first update has learning rate 0, so with warmup_steps=1 step 1 is finite and step 2 is not,
and with warmup_steps=0 step 1 already overflows), and optim.eps=0, where an embedding row that no input token used
has a zero gradient and Adam's update is 0/0 (train() is called directly here; the command line's optimizer checks
refuse eps=0 up front). In every case the loss and gradient norm are finite: only the updated state is not.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bolt_jax.train.checkpointing import TrainCheckpointer
from bolt_jax.train.loop import (
    ChangedSettingsError,
    NonFiniteCheckpointError,
    NonFiniteLossError,
    TrainSetup,
    changed_settings,
    resume_settings,
    train,
)
from tests.helpers import repo_root
from tests.test_train import small_config

ROOT = repo_root()


def _tiny(run_dir, **train_overrides):
    c = small_config(run_dir, **train_overrides)
    c.optim.warmup_steps = 1
    return c


def _checkpoints(run_dir, setup) -> dict[int, dict]:
    """Every checkpoint on disk, restored with the repo's checkpointer into host numpy."""
    ck = TrainCheckpointer(os.path.join(run_dir, "checkpoints"))
    try:
        out = {}
        for step in ck.all_steps():
            state, _ = ck.restore(step, setup.abstract_state)
            out[step] = jax.device_get(state)
        return out
    finally:
        ck.close()


def _nonfinite_leaves(state) -> list[str]:
    return [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(state)
            if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(np.asarray(x)).all()]


# ------------------------------------------------------------------------------------------ non-finite updates
@pytest.mark.parametrize("case", ["huge_lr_after_one_step",  # the other two: make test-slow (suite time)
                                  pytest.param("huge_lr_at_once", marks=pytest.mark.slow),
                                  pytest.param("eps0_zero_grad", marks=pytest.mark.slow)])
def test_nonfinite_update_after_finite_loss_is_never_checkpointed(tmp_path, case):
    c = _tiny(tmp_path, steps=6, save_every=1)
    if case.startswith("huge_lr"):
        c.optim.lr, c.optim.weight_decay = 1e38, 10.0  # lr * weight_decay * (a norm weight of 1) overflows float32
        c.optim.warmup_steps = 1 if case == "huge_lr_after_one_step" else 0
    else:
        c.optim.eps = 0.0
    bad_step, last_good = (2, 1) if case == "huge_lr_after_one_step" else (1, None)

    with pytest.raises(NonFiniteLossError) as err:
        train(c)
    message = str(err.value)
    assert f"non-finite parameters or optimizer state after the update at step {bad_step}" in message
    assert "from a finite loss=" in message
    if last_good is None:
        assert "No checkpoint was written" in message
    else:
        assert f"The last finite checkpoint is step {last_good} in {tmp_path / 'checkpoints'}" in message
    # the finite steps were logged, the bad one was not
    logged = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert logged == list(range(1, bad_step))

    setup = TrainSetup(c)
    saved = _checkpoints(tmp_path, setup)
    assert sorted(saved) == ([] if last_good is None else [last_good])
    for step, state in saved.items():
        assert _nonfinite_leaves(state) == [], step

    # a rerun resumes from the finite checkpoint (or starts over) and stops at the same update, not on NaN inputs
    with pytest.raises(NonFiniteLossError, match=f"after the update at step {bad_step} .*from a finite loss"):
        train(c)
    assert sorted(_checkpoints(tmp_path, setup)) == sorted(saved)


def test_step_reports_the_updated_state(tmp_path):
    """The step's own flags: a finite loss and gradient, a non-finite update, the state left as it was."""
    from bolt_jax import parallel
    from bolt_jax.data.sources import SyntheticBatches

    c = _tiny(tmp_path)
    c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps = 1e38, 10.0, 0
    setup = TrainSetup(c)
    state = setup.init_state()
    before = jax.device_get(state["params"])
    batch = next(SyntheticBatches(rows=8, seq_len=32, vocab_size=setup.model_cfg.vocab_size, seed=0, docs_per_row=2))
    with setup.mesh_context():
        state, metrics = setup.train_step(state, parallel.shard_batch(batch, setup.mesh))
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    assert not metrics["update_finite"] and not metrics["finite"]
    assert int(state["step"]) == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state["params"]))):
        np.testing.assert_array_equal(a, b)


def test_a_nonfinite_checkpoint_on_disk_is_not_resumed(tmp_path):
    """A checkpoint with NaNs (as a version without the update check wrote them) is refused, naming the one before."""
    c = _tiny(tmp_path, steps=4, save_every=1)
    setup = TrainSetup(c)
    os.makedirs(tmp_path, exist_ok=True)
    with open(tmp_path / "config.json", "w") as f:
        f.write(c.to_json_best_effort(indent=2))
    from bolt_jax.train import batches as batches_lib
    source = batches_lib.make_train_batches(c, setup.model_cfg.vocab_size)
    ck = TrainCheckpointer(str(tmp_path / "checkpoints"), async_save=False)
    with setup.mesh_context():
        state = setup.init_state()
        for step in (1, 2):
            state = dict(state, step=jax.numpy.asarray(step, jax.numpy.int32))
            if step == 2:
                state["params"] = jax.tree.map(lambda x: x.at[..., 0].set(np.nan), state["params"])
            next(source)
            ck.save(step, state, source, force=True)
    ck.close()
    with pytest.raises(NonFiniteCheckpointError, match="checkpoint 2 in .* holds non-finite .* resume from step 1"):
        train(c)


# ------------------------------------------------------------------------------------------ changed settings
def test_resume_settings_cover_what_determines_the_result():
    c = small_config("/x")
    plain = json.loads(c.to_json_best_effort())
    s = resume_settings(plain)
    for key in ("model.hidden_size", "model.vocab_size", "model.param_dtype", "optim.lr", "optim.eps",
                "data.seq_len", "data.source", "train.global_batch_size", "train.init_checkpoint", "seed"):
        assert key in s, key
    for key in ("train.steps", "train.log_every", "train.save_every", "train.eval_every", "train.keep_checkpoints",
                "train.micro_batch_size", "train.on_change", "run_dir", "model.compute_dtype", "model.remat_policy",
                "model.attention_impl", "mesh.fsdp"):
        assert key not in s, key
    other = json.loads(json.dumps(plain))
    other["model"]["hidden_size"] = 128
    other["optim"]["lr"] = float("nan")
    other["train"]["steps"] = 10 ** 6
    other["model"]["compute_dtype"] = "bfloat16"
    assert changed_settings(s, resume_settings(other)) == ["model.hidden_size: 64 -> 128", "optim.lr: 0.001 -> nan"]
    nan = dict(s, **{"optim.lr": float("nan")})
    assert changed_settings(nan, dict(nan)) == []  # NaN equals NaN: a rerun of the same config is not refused
    assert changed_settings({"a": 1}, {"a": 1.0, "b": 2}) == ["b: <unset> -> 2"]


def test_resume_under_other_settings_is_refused_or_restarted(tmp_path):
    first = train(_tiny(tmp_path, steps=2, save_every=1))
    assert first["steps"] == 2 and (tmp_path / "model").exists()
    old_config = (tmp_path / "config.json").read_text()

    # a changed result-determining setting: refused before anything is built, in one line naming the key
    for section, key, value, shown in [("model", "hidden_size", 128, "model.hidden_size: 64 -> 128"),
                                       ("data", "seq_len", 64, "data.seq_len: 32 -> 64"),
                                       ("train", "global_batch_size", 16, "train.global_batch_size: 8 -> 16"),
                                       (None, "seed", 7, "seed: 42 -> 7")]:
        c = _tiny(tmp_path, steps=4, save_every=1)
        (c if section is None else c[section])[key] = value
        with pytest.raises(ChangedSettingsError) as err:
            train(c)
        message = str(err.value)
        assert "\n" not in message and shown in message and "train.on_change=restart" in message, message
        assert (tmp_path / "config.json").read_text() == old_config  # the stored settings are left alone

    # only train.steps raised (and the logging/checkpoint cadence changed): it resumes
    c = _tiny(tmp_path, steps=3, save_every=1)
    c.train.log_every = 5
    c.train.loss_chunk_size = 16
    resumed = train(c)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 3
    # ... and the exported model is the one of step 3, not the step-2 export of the first leg
    marker = json.loads((tmp_path / "model" / "bolt_checkpoint.json").read_text())
    assert marker["provenance"]["step"] == 3

    # on_change=restart: the old checkpoints and outputs go to checkpoints.stale-1, the run starts from scratch
    c = _tiny(tmp_path, steps=2, save_every=1, on_change="restart")
    c.model.hidden_size = 128
    fresh = train(c)
    assert fresh["resumed_from"] == 0 and fresh["steps"] == 2
    stale = tmp_path / "checkpoints.stale-1"
    old = TrainCheckpointer(str(stale))
    assert old.all_steps() == [2, 3]  # kept (keep_checkpoints=2), and still a checkpoint directory
    old.close()
    assert json.loads((stale / "config.json").read_text())["model"]["hidden_size"] == 64
    assert (stale / "model").exists() and (stale / "metrics.jsonl").exists()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden_size"] == 128
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [1, 2]
    new = TrainCheckpointer(str(tmp_path / "checkpoints"))
    assert new.all_steps() == [1, 2]
    new.close()


def test_command_line_refuses_in_one_line(tmp_path):
    """The CLI stops at validation (before building or compiling anything) with `error: ...` naming the key."""
    train(_tiny(tmp_path, steps=1, save_every=1))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    args = [sys.executable, "-m", "bolt_jax.main", "--config", "configs/train_synthetic.py",
            f"--config.run_dir={tmp_path}", "--config.train.steps=3", "--config.optim.warmup_steps=1",
            "--config.data.seq_len=32", "--config.optim.lr=0.002", "--config.train.progress_bar=False"]
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "optim.lr: 0.001 -> 0.002" in last and "Traceback" not in r.stderr
    assert "training summary" not in r.stdout
