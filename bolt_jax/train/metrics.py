"""Training metrics from process 0 only: metrics.jsonl always, plus the trackers `train.tracker` names
(TensorBoard, Weights & Biases); MFU from device peaks. The console's lines and bar are bolt_jax.runtime.console's."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

import jax

from bolt_jax.runtime.chips import PEAK_BF16_FLOPS, for_device_kind


def device_peak_flops(device=None) -> float | None:
    """Per-device bf16 peak, or None when unknown (CPU): MFU is then not reported rather than invented."""
    return for_device_kind(PEAK_BF16_FLOPS, (device or jax.devices()[0]).device_kind)


def _finite_or_none(value: Any):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else None


TRACKERS = ("tensorboard", "wandb", "none")
WANDB_ID_FILE = "bolt_run_id"  # in run_dir/wandb: a resumed run continues the same W&B run


def trackers(value: str) -> tuple[str, ...]:
    """`"tensorboard,wandb"` -> ("tensorboard", "wandb"); "none" -> ()."""
    return tuple(x for x in (part.strip() for part in str(value).split(",")) if x and x != "none")


def validate_tracker(value: str) -> None:
    """Before anything compiles: known tracker names, and wandb installed when named (not a failure at step 0)."""
    names = [x.strip() for x in str(value).split(",") if x.strip()]
    unknown = [x for x in names if x not in TRACKERS]
    if not names or unknown:
        raise ValueError(f"config.train.tracker={value!r}; choose one of {TRACKERS} (or \"tensorboard,wandb\")")
    if "none" in names and len(names) > 1:
        raise ValueError(f"config.train.tracker={value!r}: \"none\" cannot be combined with a tracker")
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        raise ValueError("config.train.tracker names wandb, which is not installed: pip install 'bolt_jax[wandb]' "
                         "(or pip install wandb), or set --config.train.tracker=tensorboard")


def _open_wandb(run_dir: str, config: Mapping[str, Any] | None, resume: bool):
    """A W&B run writing under run_dir/wandb (WANDB_MODE=offline: files only; WANDB_PROJECT, WANDB_ENTITY as
    usual). A resumed training run (`resume`) continues the W&B run whose id run_dir/wandb/bolt_run_id holds."""
    import wandb
    directory = os.path.join(run_dir, "wandb")
    os.makedirs(directory, exist_ok=True)
    id_path = os.path.join(directory, WANDB_ID_FILE)
    run_id = None
    if resume and os.path.exists(id_path):
        with open(id_path) as f:
            run_id = f.read().strip() or None
    run_id = run_id or secrets.token_hex(6)
    with open(id_path, "w") as f:
        f.write(run_id)
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "bolt-jax"), dir=run_dir, id=run_id, resume="allow",
                      name=os.path.basename(os.path.abspath(run_dir)), config=dict(config or {}))


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl (flushed, so a crash loses nothing logged) and
    mirrors the scalars to the `tracker`s: TensorBoard (when tensorboardX is installed), Weights & Biases."""

    def __init__(self, run_dir: str, *, filename: str = "metrics.jsonl", tracker: str = "tensorboard",
                 config: Mapping[str, Any] | None = None, resume: bool = False):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(run_dir, filename)
        self._file = None
        self._tb = None
        self._wandb = None
        if not self.enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._file = open(self.path, "a")
        names = trackers(tracker)
        if "tensorboard" in names:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
            except ImportError:
                self._tb = None
        if "wandb" in names:
            self._wandb = _open_wandb(run_dir, config, resume)

    def write(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": time.time()}
        record.update({f"{prefix}{k}": _finite_or_none(v) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in record.items() if k not in ("step", "time") and isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
