"""What every benchmark prints: the commit, the device and jax version, and min / median / max of its samples.

Every figure is a distribution, not one number: `time_samples` keeps each timed run, `Samples` carries them with
their min / median / max, and `--json PATH` (every bench script) writes them for bench/headline.py to collect.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

from bolt_jax.runtime import xla_flags

xla_flags.apply_defaults()  # before jax starts its backend, as `python -m bolt_jax.main` does

import jax  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit() -> str:
    """The commit measured, with "+changes" when the working tree differs from it outside bench/results (a result of
    uncommitted code says so). BOLT_COMMIT wins: a copy of the tree without .git (a lent GPU) still names its
    commit."""
    if os.environ.get("BOLT_COMMIT"):
        return os.environ["BOLT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=REPO).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)bench/results"],
                                 capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
    except Exception:  # noqa: BLE001
        return "unknown"
    return head + ("+changes" if changed else "")


def device_kind() -> str:
    return jax.devices()[0].device_kind


def header() -> str:
    return (f"{jax.device_count()} x {device_kind()}, jax {jax.__version__}, commit {commit()}, "
            f"{time.strftime('%Y-%m-%d')}")


def run_info() -> dict[str, Any]:
    """The fields that name a measurement, for a bench script's JSON."""
    return {"device": device_kind(), "device_count": jax.device_count(), "backend": jax.default_backend(),
            "jax": jax.__version__, "commit": commit(), "date": time.strftime("%Y-%m-%d")}


@dataclasses.dataclass(frozen=True)
class Samples:
    """The values of repeated runs of one figure (seconds, tokens/s, a ratio...), in the order they were taken."""

    values: tuple[float, ...]

    def __post_init__(self):
        if not self.values:
            raise ValueError("Samples needs at least one value")

    @classmethod
    def of(cls, values: Iterable[float]) -> Samples:
        return cls(tuple(float(v) for v in values))

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def map(self, fn: Callable[[float], float]) -> Samples:
        """Each sample through `fn` (seconds -> tokens/s keeps the pairing of run i with run i)."""
        return Samples.of(fn(v) for v in self.values)

    def summary(self) -> dict[str, Any]:
        """The JSON form every figure takes: median, min, max and the samples themselves."""
        return {"median": self.median, "min": self.min, "max": self.max, "samples": list(self.values)}

    def fmt(self, spec: str = ".3g", scale: float = 1.0) -> str:
        """'min / median / max', each value times `scale` formatted with `spec`."""
        return " / ".join(format(x * scale, spec) for x in (self.min, self.median, self.max))


def pairwise(a: Samples, b: Samples, fn: Callable[[float, float], float]) -> Samples:
    """fn(run i of a, run i of b) for each i: a ratio of two figures measured side by side, run against run."""
    return Samples.of(fn(x, y) for x, y in zip(a.values, b.values))


def time_samples(fn: Callable[[], object], *, runs: int, warmup: int = 1) -> Samples:
    """Wall time of each of `runs` calls of `fn()` (which must block until its device work is done) after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Samples.of(times)


def median_seconds(fn: Callable[[], object], *, runs: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` after `warmup` calls (the samples: `time_samples`)."""
    return time_samples(fn, runs=runs, warmup=warmup).median


def peak_flops() -> tuple[float | None, str]:
    """The device's dense bf16 peak FLOP/s and where it comes from: the datasheet table of bolt_jax.train.metrics
    on a known accelerator; on a CPU (no datasheet peak) the fp32 matmul rate measured here, so a smoke run still
    computes an MFU, labelled as such (meaningless as a figure). None only where neither is available."""
    from bolt_jax.train.metrics import device_peak_flops
    peak = device_peak_flops()
    if peak:
        return peak, "datasheet dense bf16 peak (bolt_jax.runtime.chips.PEAK_BF16_FLOPS)"
    if jax.default_backend() != "cpu":
        return None, "unknown device: no datasheet peak"
    return measured_matmul_flops(), "CPU smoke: measured fp32 matmul rate, not a datasheet peak"


def measured_matmul_flops(n: int = 512, runs: int = 5) -> float:
    """FLOP/s of an n x n fp32 matmul on the default device (the best of `runs`)."""
    import jax.numpy as jnp
    x = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    seconds = time_samples(lambda: mm(x).block_until_ready(), runs=runs).min
    return 2 * n ** 3 / seconds


def smoke_defaults(args: Any, parser: Any, **values: Any) -> None:
    """`--smoke`'s tiny shapes, for the arguments left at their defaults: an explicit argument still wins (so
    bench/headline.py can ask a smoke run for, say, ragged prompts or 5 samples)."""
    for name, value in values.items():
        if getattr(args, name) == parser.get_default(name):
            setattr(args, name, value)


def write_json(path: str, obj: Any) -> None:
    """A bench script's machine-readable result (`--json PATH`), written whole or not at all."""
    from bolt_jax.runtime.atomic import atomic_write_json
    atomic_write_json(path, obj)


def write_results(stem: str, obj: Any, text: str) -> None:
    """`stem`.json (with `run_info()`) and `stem`.md: a bench script's results as it writes them itself."""
    write_json(stem + ".json", {**run_info(), **obj})
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(f"wrote {stem}.json and .md")
