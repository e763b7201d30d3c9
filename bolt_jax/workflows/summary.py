"""The `model_summary` workflow: build the model on the mesh, print every parameter with its sharding, time a
forward pass. The quickest check that a config's model and mesh fit together."""

from __future__ import annotations

import time

import ml_collections


def _format_table(rows: list[tuple], headers: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [*rows, headers]) for i in range(len(headers))]

    def line(r: tuple) -> str:
        return "  ".join(str(v).ljust(w) for v, w in zip(r, widths))

    return "\n".join([line(headers), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


def model_summary(config: ml_collections.ConfigDict) -> dict:
    """Build the model on the mesh, print parameters with their shardings, and time a forward pass."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from bolt_jax import parallel
    from bolt_jax.config import llama_config
    from bolt_jax.model import create_model

    cfg = llama_config(config.model)
    mesh = parallel.make_mesh(dict(config.mesh))
    rules = parallel.normalize_rules(dict(config.rules))
    t0 = time.perf_counter()
    with parallel.logical_rules(rules):
        model = create_model(cfg, mesh, seed=config.seed, rules=rules)
    init_s = time.perf_counter() - t0
    state = nnx.state(model, nnx.Param)
    rows = []
    for path, var in nnx.to_flat_state(state):
        value = var[...]
        rows.append(("/".join(map(str, path)), "x".join(map(str, value.shape)), str(value.dtype),
                     str(value.sharding.spec), f"{value.size:,}"))
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state))
    print(f"mesh: {parallel.mesh_summary(mesh)}")
    print(_format_table(rows, ("parameter", "shape", "dtype", "sharding", "count")))
    print(f"parameters: {n_params:,} (closed form {cfg.num_params():,}); created sharded in {init_s:.2f}s")
    print(f"replicated beyond each device's share: {parallel.replicated_fraction(state, mesh, rules):.1%} of "
          f"parameter bytes (parallel.check_sharding fails above a limit)")

    batch = config.summary.batch_size or parallel.batch_divisor(mesh)
    seq = min(config.summary.seq_len, cfg.max_position_embeddings)
    tokens = np.random.default_rng(config.seed).integers(0, cfg.vocab_size, (batch, seq), dtype=np.int32)
    inputs = parallel.shard_batch({"tokens": tokens}, mesh)

    @nnx.jit
    def forward(m, toks):
        return jnp.mean(m(toks))

    with parallel.use_mesh(mesh, rules):
        t0 = time.perf_counter()
        forward(model, inputs["tokens"]).block_until_ready()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = float(forward(model, inputs["tokens"]).block_until_ready())
        step_s = time.perf_counter() - t0
    print(f"forward {batch}x{seq}: first call (compile) {compile_s:.2f}s, then {step_s * 1e3:.1f} ms; "
          f"mean logit {out:.4f}")
    return {"num_params": n_params, "forward_ms": step_s * 1e3}



