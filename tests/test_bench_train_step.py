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


def test_the_autodiff_choice_reaches_the_models_mlp(monkeypatch):
    """`--mlp_backward autodiff` must change what the model runs, not only a name: the layer's MLP traces to one custom
    backward with the model's SwiGLU and to none after the switch (which the smoke run's losses cannot tell)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bolt_jax.model import Llama, llama, preset
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    monkeypatch.setattr(llama, "swiglu", llama.swiglu)  # restored after the test
    import train_step
    cfg = preset("tiny", compute_dtype="float32")
    layer = jax.tree.map(lambda x: x[0], llama.pure_dict(nnx.state(Llama(cfg, nnx.Rngs(0)), nnx.Param))["layers"])
    h = jnp.zeros((1, 8, cfg.hidden_size))
    attn = jnp.zeros((1, 8, cfg.num_attention_heads, cfg.head_size))

    def custom_backwards() -> int:
        jaxpr = jax.make_jaxpr(lambda h, a: llama.attention_output_and_mlp(cfg, h, a, layer))(h, attn)
        return str(jaxpr).count("custom_vjp_call")

    assert custom_backwards() == 1
    train_step.use_mlp_backward("autodiff")
    assert custom_backwards() == 0
