"""AdamW with the original's schedule (spec 6.2), gradient clipping once per optimizer step.

The schedule multiplier is f(s) = s/W for s < W, then cosine from 1 to m over [W, N], then m: optax evaluates it at
the count of previous updates, which is what torch's LambdaLR does, so update 1 has learning rate 0 as in the
original.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def default_optim_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "lr": 1e-4,  # base learning rate (every released BoLT run)
        "warmup_steps": 1000,
        "lr_min_ratio": 1e-6,  # cosine floor as a fraction of lr
        "b1": 0.9,
        "b2": 0.95,
        "eps": 1e-8,
        "weight_decay": 0.01,
        # The original decays every parameter; set False to exclude norms and embeddings (common practice).
        "decay_norms_and_embeddings": True,
        "clip_grad_norm": 1.0,  # global norm, applied once per optimizer step (after accumulation); <= 0 disables
    })


def lr_multiplier(step, warmup_steps: int, total_steps: int, min_ratio: float):
    """The spec's f(s) (works on ints and traced arrays)."""
    s = jnp.asarray(step, jnp.float32)
    warm = s / max(warmup_steps, 1)
    span = max(total_steps - warmup_steps, 1)
    progress = jnp.clip((s - warmup_steps) / span, 0.0, 1.0)
    cosine = min_ratio + 0.5 * (1 - min_ratio) * (jnp.cos(math.pi * progress) + 1)
    after = jnp.where(s > total_steps, min_ratio, cosine)
    return jnp.where(s < warmup_steps, warm, after)


def lr_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    def schedule(count):
        return cfg.lr * lr_multiplier(count, cfg.warmup_steps, total_steps, cfg.lr_min_ratio)
    return schedule


def decay_mask(params: Any) -> Any:
    """True for matrices that get weight decay; False for norms (1-D per layer) and the embedding table."""
    def keep(path, leaf):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return not ("embed_tokens" in names or any("norm" in n for n in names))
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    mask = None if cfg.decay_norms_and_embeddings else decay_mask
    parts = []
    if cfg.clip_grad_norm and cfg.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    parts.append(optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=mask))
    return optax.chain(*parts)
