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


def check_number(key: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False,
                  high_open: bool = False, fix: str = "") -> None:
    """ValueError naming `config.<key>`, its value and the fix unless `value` is a finite number in the range."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        where = f"a finite number in {lo}{low:g}, {high:g}{hi}" if math.isfinite(high) else \
            f"a finite number {'>' if low_open else '>='} {low:g}"
        raise ValueError(f"config.{key}={value!r} must be {where}; set e.g. --config.{key}={fix}")


def validate_optim_config(config: ml_collections.ConfigDict) -> None:
    """The optimizer's numbers (config.optim), before anything is built: a nan, infinite or negative learning rate
    (a negative one would train uphill without an error), betas outside [0, 1), eps <= 0, ... raise ValueError."""
    if "optim" not in config:
        return
    o, d = config.optim, default_optim_config()
    get = lambda k: o.get(k, d[k])  # noqa: E731
    check_number("optim.lr", get("lr"), low=0.0, low_open=True, fix=f"{d.lr:g}")
    warmup = get("warmup_steps")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"config.optim.warmup_steps={warmup!r} must be a whole number >= 0 (0 = no warmup); "
                         f"set e.g. --config.optim.warmup_steps={d.warmup_steps}")
    check_number("optim.lr_min_ratio", get("lr_min_ratio"), low=0.0, high=1.0, fix=f"{d.lr_min_ratio:g}")
    check_number("optim.b1", get("b1"), low=0.0, high=1.0, high_open=True, fix=f"{d.b1:g}")
    check_number("optim.b2", get("b2"), low=0.0, high=1.0, high_open=True, fix=f"{d.b2:g}")
    check_number("optim.eps", get("eps"), low=0.0, low_open=True, fix=f"{d.eps:g}")
    check_number("optim.weight_decay", get("weight_decay"), low=0.0, fix=f"{d.weight_decay:g}")
    clip = get("clip_grad_norm")
    if not (isinstance(clip, (int, float)) and math.isfinite(clip)):
        raise ValueError(f"config.optim.clip_grad_norm={clip!r} must be a finite number (<= 0 disables clipping); "
                         f"set e.g. --config.optim.clip_grad_norm={d.clip_grad_norm:g}")
    if not isinstance(get("decay_norms_and_embeddings"), bool):
        raise ValueError(f"config.optim.decay_norms_and_embeddings={get('decay_norms_and_embeddings')!r} must be "
                         "True or False")
