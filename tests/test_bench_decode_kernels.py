"""bench/decode_kernels.py, the decode attention kernels timed alone: its smoke run on this CPU writes one row per
kernel with its samples and its error against XLA (so a GPU session does not find the script broken), and the
Mosaic GPU decode's forced layout (`compute_wgs`, the `mosaic_gpu_2wg` row) gives the same attention as its choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

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


def test_forced_warpgroups_give_the_same_attention():
    """Both layouts of the Mosaic GPU decode (here their pure-JAX twin) on rows that fit one warpgroup: equal."""
    from bolt_jax.kernels.decode_mosaic_gpu import mosaic_decode_attention
    from tests.test_kernels_decode_mosaic import _problem
    q, kc, vc, kw = _problem(3, 1, 16, 2, jnp.float32, lengths=[256, 1, 130])
    one, two = (mosaic_decode_attention(q, kc, vc, interpret=True, compute_wgs=w, **kw) for w in (1, 2))
    np.testing.assert_allclose(one, two, atol=1e-6)
