"""Llama model: config (HF config.json <-> LlamaConfig), NNX modules, and creation on a mesh."""

from __future__ import annotations

from flax import nnx

from bolt_jax.model.config import PRESETS, TINYLLAMA_1_1B, LlamaConfig, preset
from bolt_jax.model.llama import Llama, param_count


def create_model(cfg: LlamaConfig, mesh=None, *, seed: int = 0, rules=None) -> Llama:
    """A randomly initialised model; with a mesh, every parameter is created directly in its sharding."""
    factory = lambda: Llama(cfg, nnx.Rngs(seed))  # noqa: E731
    if mesh is None:
        return factory()
    from bolt_jax.parallel import create_sharded
    return create_sharded(factory, mesh, rules)


__all__ = ["LlamaConfig", "Llama", "PRESETS", "TINYLLAMA_1_1B", "preset", "param_count", "create_model"]
