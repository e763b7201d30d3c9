"""XLA flags that the H100 measurements chose (BENCHMARKS.md), set before jax starts its backend.

`--xla_gpu_enable_triton_gemm=false` sends every matmul to cuBLAS: the TinyLlama train step ran 4% faster (528 ->
508 ms at micro-batch 16 on one H100). The user's own XLA_FLAGS win: a flag already named there is left alone, and
BOLT_XLA_DEFAULTS=0 turns the defaults off.
"""

from __future__ import annotations

import os

GPU_DEFAULTS = ("--xla_gpu_enable_triton_gemm=false",)


def apply_defaults() -> None:
    """Appends the defaults to XLA_FLAGS; must run before the first jax computation (a no-op after it)."""
    if os.environ.get("BOLT_XLA_DEFAULTS", "1") == "0":
        return
    current = os.environ.get("XLA_FLAGS", "")
    named = {f.split("=", 1)[0] for f in current.split()}
    extra = [f for f in GPU_DEFAULTS if f.split("=", 1)[0] not in named]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
