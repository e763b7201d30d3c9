"""`make demo` end to end at a few steps: toy data, tokenizer, two training runs, table and PNG."""

import json
import os
import subprocess
import sys

from tests.helpers import repo_root


def test_demo_runs_end_to_end_and_plots(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", "--config", "configs/demo.py",
                        f"--config.run_dir={tmp_path}", "--config.train.steps=6", "--config.train.eval_every=3",
                        "--config.train.eval_batches=1", "--config.train.log_every=3", "--config.train.save_every=6",
                        "--config.demo.num_train_docs=200", "--config.demo.num_validation_docs=20",
                        "--config.train.progress_bar=False"],
                       cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BoLT toy demo" in r.stdout and "val loss (raw)" in r.stdout
    png = tmp_path / "loss_curves.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    assert set(summary) == {"raw", "thoughts"}
    for run in summary.values():
        assert run["steps"] == 6 and run["val_loss"] > 0
    # the thought run really trained on thoughts: its metrics have thought-token losses, the raw run's do not
    rows = [json.loads(l) for l in open(tmp_path / "thoughts" / "metrics.jsonl")]
    assert any(row.get("tokens_thought", 0) > 0 for row in rows)
    rows = [json.loads(l) for l in open(tmp_path / "raw" / "metrics.jsonl")]
    assert all(not row.get("tokens_thought") for row in rows)
