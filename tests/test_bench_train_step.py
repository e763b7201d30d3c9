"""bench/train_step.py's comparison of the SwiGLU's two backwards: its smoke run on this CPU times one row per
backward, each in its own process, with nearly the same loss after three steps (the forward is the same expression,
the gradients differ in rounding), so a GPU session does not find the comparison broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_run_times_each_mlp_backward(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", BOLT_COMMIT="testcommit")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "train_step.py"), "--smoke", "--runs", "2",
                        "--mlp_backward", "custom,autodiff", "--json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.load(open(out))["rows"]
    assert [row["mlp_backward"] for row in rows] == ["custom", "autodiff"], rows
    assert all(len(row["step_s"]["samples"]) == 2 for row in rows)
    assert abs(rows[0]["loss"] - rows[1]["loss"]) < 1e-3 * abs(rows[0]["loss"])
