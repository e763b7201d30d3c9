"""cuDNN flash attention through `jax.nn.dot_product_attention(implementation="cudnn")` (GPU only).

Grouped-query attention is native (K divides H); packed documents become a boolean mask from the segment ids.
Checked on an H100 against an fp32 oracle (relative error 3.4e-3 in bf16; BENCHMARKS.md). The dense document
mask costs it 1.45x plain causal attention (2.9 vs 2.0 ms per TinyLlama layer): cuDNN's packed (THD) layout
through q_seqlen/q_offsets would avoid the mask and is not wired yet. On other backends it raises, and `auto` never
picks it there.

Ahead of time (a GPU program compiled on a machine without one, bolt_jax.aot): jax 0.12.0's XLA emits cuDNN's custom
call without a device; 0.12.1's asks for a cuDNN handle there and fails the compile. `bolt_jax.aot.topology` probes it
once and records why not in `DEVICELESS_REFUSAL`; where it is set the call refuses at trace time, so `auto` compiles
its fallback instead, saying so, rather than failing the whole dry run.
"""

from __future__ import annotations

import jax

from bolt_jax.kernels.platform import target_platform

# Why cuDNN's attention cannot be compiled here for GPUs this machine does not have (None: it can, or not probed;
# bolt_jax.aot.topology.cudnn_compiles sets it).
DEVICELESS_REFUSAL: str | None = None


def cudnn_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, *, q_segment_ids_BxS=None, kv_segment_ids_BxT=None,
                    causal: bool = True, sm_scale: float | None = None, q_positions_BxS=None, kv_positions_BxT=None):
    if q_positions_BxS is not None or kv_positions_BxT is not None:
        raise NotImplementedError("cudnn: causality by explicit positions (decode) is not supported; use impl='xla'")
    if DEVICELESS_REFUSAL and target_platform() == "gpu" and jax.default_backend() != "gpu":
        raise NotImplementedError(f"cudnn: {DEVICELESS_REFUSAL}")
    mask = None
    if q_segment_ids_BxS is not None:
        mask = (q_segment_ids_BxS[:, None, :, None] == kv_segment_ids_BxT[:, None, None, :])
    return jax.nn.dot_product_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, mask=mask, is_causal=causal,
                                        scale=sm_scale, implementation="cudnn")
