"""What every benchmark prints: the commit, the device and jax version, and a median after warm-up."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable

from bolt_jax.runtime import xla_flags

xla_flags.apply_defaults()  # before jax starts its backend, as `python -m bolt_jax.main` does

import jax  # noqa: E402


def commit() -> str:
    """The commit measured. BOLT_COMMIT wins: a copy of the tree without .git (a lent GPU) still names its commit."""
    if os.environ.get("BOLT_COMMIT"):
        return os.environ["BOLT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def header() -> str:
    return (f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, commit {commit()}, "
            f"{time.strftime('%Y-%m-%d')}")


def median_seconds(fn: Callable[[], object], *, runs: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` (which must block until its device work is done) after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
