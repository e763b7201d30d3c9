"""cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")` (GPU only).

Grouped-query attention is native (K divides H); packed documents become a boolean mask from the segment ids.
Status: not run yet (no GPU in this project's sessions so far); on other backends it raises, and `auto` never picks
it there.
"""

from __future__ import annotations

import jax


def cudnn_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, *, q_segment_ids_BxS=None, kv_segment_ids_BxT=None,
                    causal: bool = True, sm_scale: float | None = None, q_positions_BxS=None, kv_positions_BxT=None):
    if q_positions_BxS is not None or kv_positions_BxT is not None:
        raise NotImplementedError("cudnn: causality by explicit positions (decode) is not supported; use impl='xla'")
    mask = None
    if q_segment_ids_BxS is not None:
        mask = (q_segment_ids_BxS[:, None, :, None] == kv_segment_ids_BxT[:, None, None, :])
    return jax.nn.dot_product_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, mask=mask, is_causal=causal,
                                        scale=sm_scale, implementation="cudnn")
