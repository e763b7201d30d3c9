"""tokamax (openxla) attention as one more `impl`: its own dispatch picks Mosaic GPU on Hopper, Triton on other
GPUs, and XLA elsewhere (`tokamax.dot_product_attention(implementation=None)`).

Packed documents reach it as a dense [B, 1, S, T] mask built from the segment ids: its public API takes no segment
ids. Optional dependency (`pip install bolt_jax[tokamax]`); `auto` never picks it. Status: checked on CPU (through
tokamax's XLA path) against our reference, values and gradients; not yet run or benchmarked on a GPU
(`python bench/attention.py --impls tokamax,pallas_gpu,cudnn` is the command for the next lent GPU).
"""

from __future__ import annotations


def tokamax_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, *, q_segment_ids_BxS=None, kv_segment_ids_BxT=None,
                      causal: bool = True, sm_scale: float | None = None, q_positions_BxS=None,
                      kv_positions_BxT=None):
    try:
        import tokamax
    except ImportError as e:  # a clear message instead of a bare ImportError deep in a trace
        raise ImportError("attention impl 'tokamax' needs the tokamax package: pip install 'bolt_jax[tokamax]'") from e
    if q_positions_BxS is not None or kv_positions_BxT is not None:
        raise NotImplementedError("tokamax: causality by explicit positions (decode) is not supported; use impl='xla'")
    mask = None
    if q_segment_ids_BxS is not None:
        mask = q_segment_ids_BxS[:, None, :, None] == kv_segment_ids_BxT[:, None, None, :]
    return tokamax.dot_product_attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, mask=mask, is_causal=causal,
                                         scale=sm_scale)
