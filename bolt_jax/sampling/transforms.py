"""Logit transforms of the sampler, and the exact log-probability of the distribution they define.

Importance weights divide by q(z), so q must be the distribution actually sampled from: temperature, banned
tokens, top-k and top-p are applied, then the kept logits are renormalised, and log q of the sampled token is read
from that renormalised distribution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def transform_logits(logits_BxV, *, temperature: float, top_k: int, top_p: float, banned_mask_V=None):
    """Masked, temperature-scaled logits [B, V] (fp32); masked entries are NEG_INF.

    top-k keeps every token whose logit is at least the k-th largest (ties kept); top-p keeps the smallest
    prefix of the sorted distribution whose mass reaches p (the token that crosses p is kept).
    """
    x = logits_BxV.astype(jnp.float32) / jnp.float32(max(temperature, 1e-6))
    if banned_mask_V is not None:
        x = jnp.where(banned_mask_V[None, :], NEG_INF, x)
    if top_k and top_k > 0 and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]
        x = jnp.where(x >= kth, x, NEG_INF)
    if top_p < 1.0:
        sorted_x = jnp.sort(x, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        # the smallest kept logit is the threshold
        threshold = jnp.min(jnp.where(keep_sorted, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x >= threshold, x, NEG_INF)
    return x


def sample_tokens(keys_B, transformed_BxV, greedy: bool):
    """(token [B], log q of it [B]) under the renormalised transformed distribution."""
    log_q_BxV = jax.nn.log_softmax(transformed_BxV, axis=-1)
    if greedy:
        tokens = jnp.argmax(transformed_BxV, axis=-1)
    else:
        tokens = jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys_B, transformed_BxV)
    logq = jnp.take_along_axis(log_q_BxV, tokens[:, None], axis=-1)[:, 0]
    return tokens.astype(jnp.int32), logq
