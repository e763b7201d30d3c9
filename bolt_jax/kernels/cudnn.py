"""cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")` (GPU only).

Grouped-query attention is native (K divides H); packed documents become a boolean mask from the segment ids.
Checked on an H100 against an fp32 oracle (relative error 3.4e-3 in bf16; BENCHMARKS.md). The dense document
mask costs it 1.45x plain causal attention (2.9 vs 2.0 ms per TinyLlama layer): cuDNN's packed (THD) layout
through q_seqlen/q_offsets would avoid the mask and is not wired yet. On other backends it raises, and `auto` never
picks it there.
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
