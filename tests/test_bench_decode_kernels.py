"""bench/decode_kernels.py, the decode attention kernels timed alone: its smoke run on this CPU writes one row per
kernel with its samples and its error against XLA (so a GPU session does not find the script broken)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_run_writes_a_row_per_kernel(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", BOLT_COMMIT="testcommit")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "decode_kernels.py"), "--smoke", "--results",
                        str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (path,) = [p for p in os.listdir(tmp_path) if p.endswith(".json")]
    out = json.load(open(tmp_path / path))
    assert [row["impl"] for row in out["rows"]] == ["xla", "pallas_gpu", "mosaic_gpu", "mosaic_gpu_2wg"]
    for row in out["rows"]:
        assert len(row["seconds"]["samples"]) == 3 and row["seconds"]["min"] > 0
        assert row["max_abs_err_vs_xla"] < 2e-2, row  # bf16 outputs
    assert out["commit"] == "testcommit" and (tmp_path / path.replace(".json", ".md")).exists()

