"""Training metrics: JSONL + TensorBoard + a console progress bar, from process 0 only; MFU from device peaks."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax

# Dense bf16 peak FLOP/s per device (vendor datasheets; H100/H200 SXM without sparsity).
PEAK_BF16_FLOPS = {
    "h100": 989e12, "h200": 989e12, "h800": 989e12, "gh200": 989e12, "a100": 312e12, "a800": 312e12,
    "l40s": 362e12, "b200": 2250e12, "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12,
    "tpu v5p": 459e12, "tpu v5": 459e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}


def device_peak_flops(device=None) -> float | None:
    """Per-device bf16 peak, or None when unknown (CPU): MFU is then not reported rather than invented."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in kind:
            return PEAK_BF16_FLOPS[key]
    return None


def _finite_or_none(value: Any):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else None


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl (flushed, so a crash loses nothing logged) and
    mirrors scalars to TensorBoard when tensorboardX is installed."""

    def __init__(self, run_dir: str, *, filename: str = "metrics.jsonl", tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(run_dir, filename)
        self._file = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._file = open(self.path, "a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:
                self._tb = None

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        record.update({f"{prefix}{k}": _finite_or_none(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
