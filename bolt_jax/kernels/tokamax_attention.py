"""tokamax (openxla) attention as one more `impl`: its own dispatch picks Mosaic GPU on Hopper, Triton on other
GPUs, and XLA elsewhere (`tokamax.dot_product_attention(implementation=None)`).

Packed documents reach it as a dense [B, 1, S, T] mask built from the segment ids: its public API takes no segment
ids. Optional dependency (`pip install bolt_jax[tokamax]`); `auto` never picks it: on an H100 (tokamax 0.0.17,
BENCHMARKS.md) it took 2.24 ms fwd+bwd with 4 documents per row (dense mask) against 0.90 ms for `mosaic_gpu`, and
1.81 ms plain causal against 1.75-1.79 ms for cuDNN. Checked on CPU (through tokamax's XLA path) against our
reference, values and gradients, and on the H100 against an fp32 oracle (relative error 3.2e-3).
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
