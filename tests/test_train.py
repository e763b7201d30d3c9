"""The M-step trainer against oracles: the spec's schedule formula, a hand-built clipped AdamW update on the full
batch, a single-device run for the sharded run, and an uninterrupted run for a SIGKILLed-and-resumed one."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bolt_jax.data.sources import SyntheticBatches
from bolt_jax.train import batches as batches_lib
from bolt_jax.train.loop import KILL_AFTER_SAVE_ENV, NonFiniteLossError, TrainSetup, dry_run, train
from bolt_jax.train.optim import lr_multiplier
from tests.helpers import repo_root

ROOT = repo_root()


def small_config(run_dir, **train_overrides):
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs" / "train_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.run_dir = str(run_dir)
    c.model.compute_dtype = "float32"
    c.data.seq_len = 32
    c.train.global_batch_size = 8
    c.train.progress_bar = False
    c.train.log_every = 1
    c.train.async_checkpoint = False
    for k, v in train_overrides.items():
        c.train[k] = v
    return c


# ----------------------------------------------------------------------------------------------- schedule
def spec_multiplier(s, warmup, total, m):
    """Spec 6.2, written independently."""
    if s < warmup:
        return s / warmup
    if s <= total:
        return m + 0.5 * (1 - m) * (math.cos(math.pi * (s - warmup) / (total - warmup)) + 1)
    return m


@pytest.mark.parametrize("s", [0, 1, 500, 999, 1000, 1001, 20000, 40689, 40690, 50000])
def test_schedule_matches_spec_formula(s):
    ours = float(lr_multiplier(s, 1000, 40690, 1e-6))
    assert ours == pytest.approx(spec_multiplier(s, 1000, 40690, 1e-6), rel=1e-5, abs=1e-7)


# ----------------------------------------------------------------------------------------------- the step
def _batch(setup, seed=0):
    src = SyntheticBatches(rows=setup.config.train.global_batch_size, seq_len=setup.config.data.seq_len,
                                       vocab_size=setup.model_cfg.vocab_size, seed=seed, docs_per_row=2)
    b = next(src)
    b["loss_weights"][:, :3] = 0.0  # uneven target counts per row: the token-weighted mean matters
    b["loss_weights"][0] = 0.0
    return b


def test_accumulation_and_clipping_equal_one_clipped_full_batch_update(tmp_path):
    """4 micro-batches == one batch 4x larger, and the clip is applied once to the accumulated gradient:
    the oracle is a plain jax.grad of the token-weighted mean over the whole batch, clipped by hand, then AdamW."""
    from flax import nnx

    from bolt_jax import parallel
    from bolt_jax.train.step import loss_sums

    results = {}
    for micro in (8, 2):
        c = small_config(tmp_path / f"m{micro}", micro_batch_size=micro)
        c.optim.clip_grad_norm = 0.05  # small enough that clipping is active
        c.optim.warmup_steps = 0
        setup = TrainSetup(c)
        state = setup.init_state()
        params0 = jax.device_get(state["params"])
        batch = _batch(setup)
        with setup.mesh_context():
            new_state, metrics = setup.train_step(state, parallel.shard_batch(batch, setup.mesh))
        mu = optax.tree_utils.tree_get(new_state["opt_state"], "mu")
        results[micro] = (jax.device_get(new_state["params"]), jax.device_get(metrics), jax.device_get(mu))

    # oracle: full batch, no accumulation machinery
    def mean_loss(p):
        model = nnx.merge(setup.graphdef, p)
        total, aux = loss_sums(model, {k: jnp.asarray(v) for k, v in batch.items()}, chunk_size=0)
        return total / aux["weight"]

    loss, grads = jax.value_and_grad(mean_loss)(params0)
    norm = optax.tree.norm(grads)
    assert float(norm) > 0.05
    clipped = jax.tree.map(lambda g: g * (0.05 / norm), grads)
    adam = optax.adamw(c.optim.lr * lr_multiplier(0, 0, c.train.steps, c.optim.lr_min_ratio), b1=0.9, b2=0.95,
                       eps=1e-8, weight_decay=0.01)
    updates, _ = adam.update(clipped, adam.init(params0), params0)
    expected = optax.apply_updates(params0, updates)

    for micro, (params, metrics, mu) in results.items():
        assert metrics["loss"] == pytest.approx(float(loss), rel=1e-5)
        assert metrics["grad_norm"] == pytest.approx(float(norm), rel=1e-4)
        # Adam's first moment after one step is (1 - b1) x the gradient it saw: the clipped accumulated gradient.
        for got, g in zip(jax.tree.leaves(mu), jax.tree.leaves(clipped)):
            np.testing.assert_allclose(got, 0.1 * np.asarray(g), rtol=1e-4, atol=1e-9, err_msg=f"micro={micro}")
        # Adam's first step is ~lr * sign(g); elements with |g| near eps are ill-conditioned, hence atol 1% of lr.
        for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
            np.testing.assert_allclose(got, want, atol=1e-2 * c.optim.lr, err_msg=f"micro={micro}")


def test_first_update_has_zero_learning_rate(tmp_path):
    """f(0) = 0: the original's first update does not move the weights (spec 6.2)."""
    from bolt_jax import parallel
    c = small_config(tmp_path)
    setup = TrainSetup(c)
    state = setup.init_state()
    before = jax.device_get(state["params"])
    with setup.mesh_context():
        state, metrics = setup.train_step(state, parallel.shard_batch(_batch(setup), setup.mesh))
    assert float(metrics["lr"]) == 0.0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state["params"]))):
        # AdamW's decoupled weight decay is also scaled by the lr, so nothing moves at all
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------- the loop
def test_sharded_training_matches_single_device(tmp_path):
    """4 steps on a 2x2x2 mesh in this process vs the same run in a process that has one device."""
    c8 = small_config(tmp_path / "mesh", steps=4, save_every=100)
    c8.mesh.data, c8.mesh.fsdp, c8.mesh.tensor = 2, 2, 2
    s8 = train(c8)
    r = _run_cli(tmp_path / "one", 4, devices=1, extra=["--config.train.save_every=100", "--config.mesh.fsdp=1"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "data=1 x fsdp=1 x tensor=1 (1 cpu devices)" in r.stdout
    one = _losses(tmp_path / "one")
    np.testing.assert_allclose([s8["losses"][k] for k in sorted(s8["losses"])], [one[k] for k in sorted(one)],
                               rtol=2e-5)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    c = small_config(tmp_path, steps=8, save_every=2)
    real = batches_lib.make_train_batches

    class Poisoned:
        def __init__(self, inner):
            self.inner = inner

        def get_state(self):
            return self.inner.get_state()

        def set_state(self, s):
            self.inner.set_state(s)

        def __next__(self):
            b = next(self.inner)
            if self.inner.index == 5:  # the 5th batch
                b["loss_weights"][0, 0] = np.nan
            return b

    monkeypatch.setattr(batches_lib, "make_train_batches", lambda *a, **k: Poisoned(real(*a, **k)))
    with pytest.raises(NonFiniteLossError, match="non-finite loss or gradient at step 5"):
        train(c)
    from bolt_jax.train.checkpointing import TrainCheckpointer
    ck = TrainCheckpointer(str(tmp_path / "checkpoints"))
    assert ck.latest_step() == 4
    metrics = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    ck.close()


def _run_cli(run_dir, steps, env_extra=None, devices=8, extra=()):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update(env_extra or {})
    args = [sys.executable, "-m", "bolt_jax.main", "--config", "configs/train_synthetic.py",
            f"--config.run_dir={run_dir}", f"--config.train.steps={steps}", "--config.train.save_every=3",
            "--config.train.log_every=1", "--config.train.progress_bar=False", "--config.model.compute_dtype=float32",
            "--config.data.seq_len=32", *extra]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _losses(run_dir):
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        m = json.loads(line)
        if "loss" in m:
            out[m["step"]] = m["loss"]
    return out


def test_resume_after_sigkill_is_exact(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = _run_cli(straight, 6)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _run_cli(killed, 6, {KILL_AFTER_SAVE_ENV: "3"})
    assert r.returncode == -9, r.stderr[-2000:]  # SIGKILLed right after checkpoint 3 was written
    assert "training summary" not in r.stdout
    r = _run_cli(killed, 6)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from 3" in r.stdout
    a, b = _losses(straight), _losses(killed)
    assert sorted(a) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert a[step] == b[step], (step, a[step], b[step])  # identical in fp32 on CPU


def test_dry_run_reports_memory_without_allocating(tmp_path):
    c = small_config(tmp_path)
    c.dry_run = True
    report = dry_run(c)
    assert report["params_gib"] > 0 and report["optimizer_gib"] == pytest.approx(2 * report["params_gib"], rel=0.01)
    assert "temp_gib" in report
    assert not (tmp_path / "checkpoints").exists()


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    """Preemption: SIGTERM mid-run -> checkpoint at the next step boundary, exit 0; a rerun finishes the job."""
    import signal
    import time as _time
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    args = [sys.executable, "-m", "bolt_jax.main", "--config", "configs/train_synthetic.py",
            f"--config.run_dir={tmp_path}", "--config.train.steps=100000", "--config.train.save_every=100000",
            "--config.train.log_every=1", "--config.train.progress_bar=False", "--config.data.seq_len=32"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = _time.time() + 240
    while _time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        _time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by" in out and "SIGTERM" in out
    from bolt_jax.train.checkpointing import TrainCheckpointer
    ck = TrainCheckpointer(str(tmp_path / "checkpoints"))
    saved = ck.latest_step()
    ck.close()
    assert saved is not None and saved >= 3
    assert max(_losses(tmp_path)) == saved  # every trained step was logged and checkpointed


def test_training_starts_from_a_converted_hf_checkpoint(tmp_path):
    """init_checkpoint: the first step's loss (before any update) equals the loss of the HF model itself, computed
    with torch on the same batch; the run then exports a model checkpoint that loads back."""
    import torch
    from transformers import LlamaForCausalLM

    from bolt_jax.model import artifact as model_ckpt
    from convert.hf_to_orbax import convert_hf_to_orbax
    from tests.helpers import build_hf_model

    hf_dir = build_hf_model(tmp_path / "hf")
    convert_hf_to_orbax(hf_dir, str(tmp_path / "ckpt"))
    c = small_config(tmp_path / "run", steps=2, save_every=100)
    c.model = __import__("bolt_jax.config", fromlist=["x"]).model_config_dict("tiny", vocab_size=512,
                                                                              intermediate_size=172)
    c.model.compute_dtype = "float32"
    c.model.max_position_embeddings = 512
    c.train.init_checkpoint = str(tmp_path / "ckpt")
    summary = train(c)

    batch = next(SyntheticBatches(rows=8, seq_len=32, vocab_size=512, seed=c.seed, docs_per_row=2))
    hf = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        losses = []
        for row in range(8):  # each packed document alone, since HF has no segment ids
            for seg in (1, 2):
                cols = batch["segment_ids"][row] == seg
                logits = hf(torch.tensor(batch["inputs"][row][cols][None])).logits[0]
                lp = torch.log_softmax(logits, -1)
                tgt = torch.tensor(batch["targets"][row][cols])
                losses.append(-lp[torch.arange(len(tgt)), tgt].numpy())
    expected = float(np.concatenate(losses).mean())
    assert summary["losses"][1] == pytest.approx(expected, rel=1e-5)
    model, cfg, tok = model_ckpt.load_model(summary["model_dir"])
    assert cfg.vocab_size == 512 and tok is not None


def test_concat_packing_trains_without_segment_ids_and_gives_the_same_loss():
    """The original's concat packing is one causal stream per row: the step drops the segment ids (plain causal
    attention, cuDNN's fast path on a GPU), which changes nothing since every row is one segment."""
    import ml_collections
    from flax import nnx

    from bolt_jax.model import Llama, preset
    from bolt_jax.train.loop import uses_document_mask
    from bolt_jax.train.step import loss_sums

    assert not uses_document_mask(ml_collections.ConfigDict({"data": {"packing": "concat"}}))
    assert uses_document_mask(ml_collections.ConfigDict({"data": {"packing": "document"}}))
    assert not uses_document_mask(ml_collections.ConfigDict({"data": {"source": "synthetic"}}))
    model = Llama(preset("tiny", compute_dtype="float32"), nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 512, (2, 17)), jnp.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": jnp.tile(jnp.arange(16), (2, 1)),
             "segment_ids": jnp.ones((2, 16), jnp.int32), "loss_weights": jnp.ones((2, 16)),
             "categories": jnp.ones((2, 16), jnp.int8)}
    with_ids, _ = loss_sums(model, batch, 0, document_mask=True)
    without, _ = loss_sums(model, batch, 0, document_mask=False)
    np.testing.assert_allclose(float(with_ids), float(without), rtol=1e-6)
