"""Flash attention on TPU through jax's Pallas splash attention: causal mask (block-sparse, so fully masked blocks
are skipped), segment ids for packed documents, and grouped-query attention by running splash's multi-query
kernel once per KV head over that head's group of query heads (no repeated K/V). Forward and backward are splash's
own Pallas TPU kernels.

Status: checked on CPU under the TPU interpreter against the XLA reference (values and gradients). Not yet run on a
TPU; the default blocks (512, or the sequence if shorter) follow splash's guidance and are untuned.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bolt_jax.kernels.platform import target_platform


@functools.lru_cache(maxsize=32)
def _kernel(seq_q: int, seq_k: int, group: int, causal: bool, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
    base = sm.CausalMask((seq_q, seq_k)) if causal else sm.FullMask((seq_q, seq_k))
    mask = sm.MultiHeadMask([base] * group)
    bq, bk = min(block, seq_q), min(block, seq_k)
    sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                          block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def pallas_tpu_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, *, q_segment_ids_BxS=None, kv_segment_ids_BxT=None,
                         causal: bool = True, sm_scale: float | None = None, q_positions_BxS=None,
                         kv_positions_BxT=None, block: int = 512, interpret: bool | None = None):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    if q_positions_BxS is not None or kv_positions_BxT is not None:
        raise NotImplementedError("pallas_tpu: causality by explicit positions (decode) is not supported; "
                                  "decode uses impl='xla'")
    b, s, h, d = q_BxSxHxD.shape
    t, kvh = k_BxTxKxD.shape[1], k_BxTxKxD.shape[2]
    group = h // kvh
    if s % 128 or t % 128:
        raise ValueError(f"pallas_tpu needs sequence lengths that are multiples of 128, got {s} and {t}")
    interpret = target_platform() != "tpu" if interpret is None else interpret
    scale = sm_scale if sm_scale is not None else d ** -0.5
    kernel = _kernel(s, t, group, causal, block, interpret)
    q_seg = jnp.zeros((b, s), jnp.int32) if q_segment_ids_BxS is None else q_segment_ids_BxS.astype(jnp.int32)
    k_seg = jnp.zeros((b, t), jnp.int32) if kv_segment_ids_BxT is None else kv_segment_ids_BxT.astype(jnp.int32)
    # [B, S, H, D] -> [B, K, G, S, D]; k, v -> [B, K, T, D]
    q = (q_BxSxHxD * scale).reshape(b, s, kvh, group, d).transpose(0, 2, 3, 1, 4)
    k = k_BxTxKxD.transpose(0, 2, 1, 3)
    v = v_BxTxKxD.transpose(0, 2, 1, 3)

    def one(q_GxSxD, k_TxD, v_TxD, qs, ks):
        return kernel(q_GxSxD, k_TxD, v_TxD, segment_ids=sk.SegmentIds(q=qs, kv=ks))

    per_head = jax.vmap(one, in_axes=(0, 0, 0, None, None))  # over KV heads
    out = jax.vmap(per_head)(q, k, v, q_seg, k_seg)  # over the batch: [B, K, G, S, D]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, s, h, d).astype(q_BxSxHxD.dtype)
