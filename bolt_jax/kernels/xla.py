"""Reference attention in plain XLA: the oracle every kernel is tested against, and the CPU path.

Grouped-query attention is computed by grouping query heads per KV head (no repeated K/V), softmax in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(q_len: int, kv_len: int, *, causal: bool, q_segment_ids_BxS=None, kv_segment_ids_BxT=None,
                   q_positions_BxS=None, kv_positions_BxT=None):
    """Boolean mask [B or 1, S, T]: True where query s may attend key t.

    Causality compares positions when both are given (KV-cache decode), else row indices aligned at the end
    (query i sits at key index i + kv_len - q_len).
    """
    mask = jnp.ones((1, q_len, kv_len), dtype=bool)
    if causal:
        if q_positions_BxS is not None and kv_positions_BxT is not None:
            mask = mask & (q_positions_BxS[:, :, None] >= kv_positions_BxT[:, None, :])
        else:
            q_idx = jnp.arange(q_len)[:, None] + (kv_len - q_len)
            mask = mask & (q_idx >= jnp.arange(kv_len)[None, :])[None]
    if q_segment_ids_BxS is not None:
        mask = mask & (q_segment_ids_BxS[:, :, None] == kv_segment_ids_BxT[:, None, :])
    return mask


def xla_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, *, q_segment_ids_BxS=None, kv_segment_ids_BxT=None,
                  causal: bool = True, sm_scale: float | None = None, q_positions_BxS=None, kv_positions_BxT=None):
    b, s, h, d = q_BxSxHxD.shape
    t, kvh = k_BxTxKxD.shape[1], k_BxTxKxD.shape[2]
    g = h // kvh
    scale = sm_scale if sm_scale is not None else d ** -0.5
    q_BxSxKxGxD = q_BxSxHxD.reshape(b, s, kvh, g, d)
    scores_BxKxGxSxT = jnp.einsum("bskgd,btkd->bkgst", q_BxSxKxGxD, k_BxTxKxD,
                                  preferred_element_type=jnp.float32) * scale
    mask = attention_mask(s, t, causal=causal, q_segment_ids_BxS=q_segment_ids_BxS,
                          kv_segment_ids_BxT=kv_segment_ids_BxT, q_positions_BxS=q_positions_BxS,
                          kv_positions_BxT=kv_positions_BxT)
    scores_BxKxGxSxT = jnp.where(mask[:, None, None], scores_BxKxGxSxT, MASK_VALUE)
    probs = jax.nn.softmax(scores_BxKxGxSxT, axis=-1)
    out_BxSxKxGxD = jnp.einsum("bkgst,btkd->bskgd", probs.astype(v_BxTxKxD.dtype), v_BxTxKxD,
                               preferred_element_type=jnp.float32)
    return out_BxSxKxGxD.reshape(b, s, h, d).astype(q_BxSxHxD.dtype)
