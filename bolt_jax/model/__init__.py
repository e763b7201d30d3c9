"""Llama model: config (HF config.json <-> LlamaConfig), NNX modules, and creation on a mesh."""

from __future__ import annotations

from flax import nnx

from bolt_jax.model.config import PRESETS, TINYLLAMA_1_1B, LlamaConfig, preset
from bolt_jax.model.llama import Llama, param_count


def create_model(cfg: LlamaConfig, mesh=None, *, seed: int = 0, rules=None) -> Llama:
    """A randomly initialised model; with a mesh, every parameter is created directly in its sharding.

    Built by one compiled program with or without a mesh, so the initial weights do not depend on the mesh: built op
    by op, jax 0.11.2 (the GPU image's) rounds the initialisers' arithmetic differently from the compiled program (the
    last bit of about a quarter of the fp32 weights; 0.12.1 agrees either way)."""
    factory = lambda: Llama(cfg, nnx.Rngs(seed))  # noqa: E731
    if mesh is None:
        return nnx.jit(factory)()
    from bolt_jax.parallel import create_sharded
    return create_sharded(factory, mesh, rules)


__all__ = ["LlamaConfig", "Llama", "PRESETS", "TINYLLAMA_1_1B", "preset", "param_count", "create_model"]
