"""Attention dispatch: one entry point, several implementations, all checked against the XLA reference.

`attention(q, k, v, *, segment_ids, causal, sm_scale, impl)` with q [B, S, H, D], k/v [B, T, K, D] (K divides H:
grouped-query attention without repeating K/V). `segment_ids` is [B, S] for self-attention over packed documents
(a token attends only within its own document), or a (q_segment_ids [B, S], kv_segment_ids [B, T]) pair.
`decode_attention` is the sampler's: new queries per row against a KV cache [B, T, K * D] (a position's KV heads side
by side) with per-row lengths; `auto` picks the platform's Pallas kernel (decode.py on GPUs, decode_tpu.py on TPUs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import jax

from bolt_jax.kernels.mosaic_gpu import wgmma_takes
from bolt_jax.kernels.platform import gpu_arch, pallas_triton_available, target_platform
from bolt_jax.kernels.xla import xla_attention

IMPLS = ("auto", "xla", "cudnn", "pallas_gpu", "mosaic_gpu", "pallas_tpu", "tokamax")
_log = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()


def _lazy(module: str, name: str) -> Callable:
    def fn(*args, **kwargs):
        import importlib
        return getattr(importlib.import_module(module), name)(*args, **kwargs)
    return fn


_REGISTRY: dict[str, Callable] = {
    "xla": xla_attention,
    "cudnn": _lazy("bolt_jax.kernels.cudnn", "cudnn_attention"),
    "pallas_gpu": _lazy("bolt_jax.kernels.pallas_gpu", "pallas_gpu_attention"),
    "mosaic_gpu": _lazy("bolt_jax.kernels.pallas_gpu", "mosaic_gpu_attention"),
    "pallas_tpu": _lazy("bolt_jax.kernels.pallas_tpu", "pallas_tpu_attention"),
    "tokamax": _lazy("bolt_jax.kernels.tokamax_attention", "tokamax_attention"),
}
# What `auto` picks per backend and input, measured on an H100 at TinyLlama's shape (BENCHMARKS.md, fwd+bwd per
# layer call). With packed documents our kernels skip the other documents' blocks where cuDNN (2.71 ms) and tokamax
# (2.24 ms) apply a dense mask: on Hopper the Mosaic GPU kernels (0.90 ms), on other GPUs the Triton-lowered Pallas
# kernel (1.24 ms on the H100). Without segment ids (plain causal: the original's concat packing) cuDNN stays: Mosaic
# is faster on fwd+bwd (1.59 vs 1.75 ms) but slower on the forward (0.47 vs 0.39 ms), and the train step is a tie.
# TPU: the splash kernel, which has not been run on a TPU yet.
AUTO = {"cpu": "xla", "gpu": "cudnn", "cuda": "cudnn", "rocm": "pallas_gpu", "tpu": "pallas_tpu"}
AUTO_WITH_DOCUMENTS = {"gpu": "pallas_gpu", "cuda": "pallas_gpu"}
HOPPER_WITH_DOCUMENTS = "mosaic_gpu"  # wgmma is sm_90a only: not Ampere, not Blackwell


# Kernels that are custom calls: XLA cannot partition them, and on a mesh it would gather their inputs onto every
# device. They run per shard instead (batch over the batch axes, heads over `tensor` when the KV heads divide).
PER_SHARD = {"pallas_gpu", "mosaic_gpu", "pallas_tpu", "tokamax"}


def _mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1 else mesh


def _row_and_head_specs(mesh, b: int, kv_heads: int):
    from bolt_jax.parallel import logical_to_spec
    batch = logical_to_spec(("batch",), mesh=mesh, shape=(b,))[0]
    heads = logical_to_spec(("act_kv_heads",), mesh=mesh, shape=(kv_heads,))[0]
    return batch, heads


def per_shard(fn: Callable, q, k, v, *, q_segment_ids_BxS=None, kv_segment_ids_BxT=None, **kwargs):
    """Runs an attention kernel on each device's rows and heads under the active mesh (a plain call without one).
    One segment-id array for both sides stays one array inside, so the kernel still sees self-attention."""
    mesh = _mesh()
    if mesh is None:
        return fn(q, k, v, q_segment_ids_BxS=q_segment_ids_BxS, kv_segment_ids_BxT=kv_segment_ids_BxT, **kwargs)
    from jax.sharding import PartitionSpec as P
    batch, heads = _row_and_head_specs(mesh, q.shape[0], k.shape[2])
    qkv_spec, seg_spec = P(batch, None, heads, None), P(batch, None)
    same = q_segment_ids_BxS is kv_segment_ids_BxT
    segs = [x for x in ((q_segment_ids_BxS,) if same else (q_segment_ids_BxS, kv_segment_ids_BxT)) if x is not None]

    def local(q, k, v, *segs):
        q_seg, kv_seg = (segs[0], segs[0]) if same and segs else (segs or (None, None))
        return fn(q, k, v, q_segment_ids_BxS=q_seg, kv_segment_ids_BxT=kv_seg, **kwargs)

    return jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec,) * 3 + (seg_spec,) * len(segs), out_specs=qkv_spec,
                         check_vma=False)(q, k, v, *segs)


def _mosaic_causal_broken() -> bool:
    from bolt_jax.kernels.mosaic_gpu import ptxas_miscompiles_causal
    return ptxas_miscompiles_causal()


def _triton_or_xla() -> str:
    """`auto`'s GPU fallback: the Triton-lowered kernel while jax has that backend, else the XLA reference."""
    return "pallas_gpu" if pallas_triton_available() else "xla"


def resolve_impl(impl: str, backend: str | None = None, documents: bool = False, arch: str | None = None) -> str:
    """Maps `auto` to a concrete implementation for the backend and for whether the rows hold packed documents
    (self-attention with segment ids); reports each choice once."""
    if impl not in IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}")
    if impl != "auto":
        return impl
    backend = backend or target_platform()
    chosen = (documents and AUTO_WITH_DOCUMENTS.get(backend)) or AUTO.get(backend, "xla")
    if chosen == "pallas_gpu" and backend in ("gpu", "cuda") and (arch or gpu_arch()) == "9.0":
        chosen = HOPPER_WITH_DOCUMENTS
    if chosen == "pallas_gpu":
        chosen = _triton_or_xla()
    if (backend, chosen) not in _announced:
        _announced.add((backend, chosen))
        _log.info("attention impl 'auto' on %s%s -> %s", backend, " with packed documents" if documents else "",
                  chosen)
    return chosen


def attention(q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, *, segment_ids=None, causal: bool = True,
              sm_scale: float | None = None, impl: str = "auto", q_positions_BxS=None, kv_positions_BxT=None):
    b, s, h, d = q_BxSxHxD.shape
    kvh = k_BxTxKxD.shape[2]
    if h % kvh:
        raise ValueError(f"query heads ({h}) must be a multiple of KV heads ({kvh})")
    if k_BxTxKxD.shape != v_BxTxKxD.shape or k_BxTxKxD.shape[-1] != d:
        raise ValueError(f"k {k_BxTxKxD.shape} and v {v_BxTxKxD.shape} must match, with head dim {d}")
    if segment_ids is None:
        q_seg = kv_seg = None
    elif isinstance(segment_ids, (tuple, list)):
        q_seg, kv_seg = segment_ids
    else:
        q_seg = kv_seg = segment_ids
    chosen = resolve_impl(impl, documents=segment_ids is not None and not isinstance(segment_ids, (tuple, list)))
    if chosen != "xla" and (q_positions_BxS is not None or (causal and k_BxTxKxD.shape[1] != s)):
        chosen = "xla"  # KV-cache decode: causality by positions, which only the reference handles
    kwargs = dict(q_segment_ids_BxS=q_seg, kv_segment_ids_BxT=kv_seg, causal=causal, sm_scale=sm_scale,
                  q_positions_BxS=q_positions_BxS, kv_positions_BxT=kv_positions_BxT)
    if impl == "auto" and chosen == "mosaic_gpu" and (not wgmma_takes(q_BxSxHxD.dtype, d)
                                                      or (causal and _mosaic_causal_broken())):
        chosen = _triton_or_xla()  # some ptxas versions miscompile the causal kernel
    if impl == "auto" and chosen == "cudnn":
        try:
            return _REGISTRY["cudnn"](q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, **kwargs)
        except Exception as e:  # noqa: BLE001 - cuDNN refuses some shapes/dtypes at trace time
            chosen = _triton_or_xla()
            if ("cudnn-fallback", str(type(e))) not in _announced:
                _announced.add(("cudnn-fallback", str(type(e))))
                _log.warning("cuDNN attention refused these inputs (%s); using %s", e, chosen)
    _require_triton(chosen, target_platform())
    if chosen in PER_SHARD and q_positions_BxS is None and kv_positions_BxT is None:
        kwargs = {k: x for k, x in kwargs.items() if k not in ("q_positions_BxS", "kv_positions_BxT")}
        return per_shard(_REGISTRY[chosen], q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, **kwargs)
    return _REGISTRY[chosen](q_BxSxHxD, k_BxTxKxD, v_BxTxKxD, **kwargs)


DECODE_IMPLS = ("auto", "xla", "pallas_gpu", "mosaic_gpu", "pallas_tpu")
# GPUs: the Triton-lowered kernel took an H100's sampler from 41.4k to 57.3k tokens/s at batch 256 (BENCHMARKS.md).
# Its Mosaic GPU replacement (decode_mosaic_gpu.py: the flash forward with a KV head's queries as rows) is checked in
# jax's Mosaic GPU interpreter but not yet timed on a GPU: `auto` takes it only where jax has no Triton backend left.
# TPUs: the Mosaic kernel, compiled ahead of time but not yet run on a TPU; by the compiled decode chunk's HBM bytes
# (bench/decode_layout.py) it moves what the XLA attention moves on a full cache and reads only the written blocks.
DECODE_AUTO = {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "tpu": "pallas_tpu"}
_DECODE_KERNELS = {"pallas_gpu": ("bolt_jax.kernels.decode", "pallas_decode_attention"),
                   "mosaic_gpu": ("bolt_jax.kernels.decode_mosaic_gpu", "mosaic_decode_attention"),
                   "pallas_tpu": ("bolt_jax.kernels.decode_tpu", "pallas_tpu_decode_attention")}
# Where each decode kernel compiles for real; elsewhere it is interpreted (or, for mosaic_gpu, its pure-JAX twin).
_DECODE_HOME = {"pallas_gpu": ("gpu", "cuda"), "mosaic_gpu": ("gpu", "cuda"), "pallas_tpu": ("tpu",)}


def _warn_if_interpreted(impl: str, platform: str) -> None:
    """A decode kernel asked for on another accelerator than its own runs in an interpreter: correct, and
    orders of magnitude slower. Said once (on CPU the interpreter is how the tests check the kernels: silent)."""
    home = _DECODE_HOME.get(impl, ())
    if home and platform not in home and platform != "cpu" and (impl, platform) not in _announced:
        _announced.add((impl, platform))
        _log.warning("decode_impl=%s on %s runs in an interpreter (it is a %s kernel): correct but very slow; "
                     "use 'auto'", impl, platform, home[0])


def _require_triton(impl: str, platform: str) -> None:
    """pallas_gpu compiles through Pallas' Triton backend on a GPU (elsewhere it is interpreted, which needs none)."""
    if impl == "pallas_gpu" and platform in ("gpu", "cuda") and not pallas_triton_available():
        raise ValueError(f"pallas_gpu needs Pallas' Triton backend, which jax {jax.__version__} no longer has: use "
                         "'auto' or 'mosaic_gpu'")


def resolve_decode_impl(impl: str, platform: str, dtype, head_dim: int) -> str:
    """`auto` -> the platform's kernel (DECODE_AUTO); on GPUs the Mosaic GPU one where jax has no Triton backend,
    and XLA where that one cannot take the inputs (wgmma: bf16 / fp16 operands, head tiles of 64)."""
    if impl != "auto":
        return impl
    impl = DECODE_AUTO.get(platform, "xla")
    if impl == "pallas_gpu" and not pallas_triton_available():
        impl = "mosaic_gpu"
    if impl == "mosaic_gpu" and not wgmma_takes(dtype, head_dim):
        impl = "xla"
    return impl


def decode_attention(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD, *, kv_segment_ids_BxT, lengths_B,
                     sm_scale: float | None = None, impl: str = "auto", return_lse: bool = False):
    """New queries (Q per row, all seeing the row's keys) against a KV cache [B, T, K * D] (a position's KV heads
    side by side): keys at positions [0, lengths[b]) whose segment id is not 0. `auto`: a Pallas kernel on GPUs and
    TPUs (each reads only the written part of the cache), XLA elsewhere. `return_lse`: also each query's log-sum-exp
    [B, Q, H] (fp32), for `decode.merge_attention`."""
    if impl not in DECODE_IMPLS:
        raise ValueError(f"unknown decode attention impl {impl!r}; choose one of {DECODE_IMPLS}")
    from bolt_jax.kernels import decode
    platform = target_platform()
    impl = resolve_decode_impl(impl, platform, q_BxQxHxD.dtype, q_BxQxHxD.shape[-1])
    _require_triton(impl, platform)
    _warn_if_interpreted(impl, platform)
    if impl == "xla":
        if return_lse:
            return decode.xla_decode_attention_lse(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD,
                                                   kv_segment_ids_BxT=kv_segment_ids_BxT, lengths_B=lengths_B,
                                                   sm_scale=sm_scale)
        return decode.xla_decode_attention(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD,
                                           kv_segment_ids_BxT=kv_segment_ids_BxT, lengths_B=lengths_B,
                                           sm_scale=sm_scale)
    chosen = _lazy(*_DECODE_KERNELS[impl])

    def kernel(q, k, v, seg, lengths):
        return chosen(q, k, v, kv_segment_ids_BxT=seg, lengths_B=lengths, sm_scale=sm_scale, return_lse=return_lse)

    mesh = _mesh()
    if mesh is None:
        return kernel(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD, kv_segment_ids_BxT, lengths_B)
    from jax.sharding import PartitionSpec as P
    kv_heads = decode.heads_of(k_cache_BxTxKD, q_BxQxHxD.shape[-1]).shape[2]
    batch, heads = _row_and_head_specs(mesh, q_BxQxHxD.shape[0], kv_heads)
    q_spec, cache_spec = P(batch, None, heads, None), P(batch, None, heads)  # whole KV heads per device
    out_specs = (q_spec, P(batch, None, heads)) if return_lse else q_spec
    return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, cache_spec, cache_spec, P(batch, None), P(batch)),
                         out_specs=out_specs, check_vma=False)(q_BxQxHxD, k_cache_BxTxKD, v_cache_BxTxKD,
                                                               kv_segment_ids_BxT, lengths_B)
