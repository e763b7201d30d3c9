"""Multi-host initialisation: one JAX process per host (or per GPU), joined through jax.distributed.

Single process is the default. Explicit settings come from the config (`config.distributed`) or the environment
(`BOLT_COORDINATOR`, `BOLT_NUM_PROCESSES`, `BOLT_PROCESS_ID`, as `launch/local.sh` sets them). `mode=auto`
also detects SLURM (srun with one task per node or per GPU) and TPU VM slices, where jax.distributed finds
everything itself. After joining, every process checks that all processes run the same config.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import ml_collections

_log = logging.getLogger(__name__)
ENV_COORDINATOR, ENV_NUM, ENV_ID = "BOLT_COORDINATOR", "BOLT_NUM_PROCESSES", "BOLT_PROCESS_ID"
_initialized = False


def default_distributed_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "mode": "auto",  # auto | single | explicit
        "coordinator_address": "",  # host:port of process 0 (explicit mode, or overrides the environment)
        "num_processes": 0,
        "process_id": -1,
        "local_device_ids": "",  # e.g. "0,1" to restrict this process to some local GPUs
        "initialization_timeout_s": 300,  # how long to wait for every process to join the coordinator
    })


def _explicit_settings(cfg: ml_collections.ConfigDict | None) -> dict[str, Any] | None:
    cfg = cfg or default_distributed_config()
    address = cfg.get("coordinator_address") or os.environ.get(ENV_COORDINATOR, "")
    num = int(cfg.get("num_processes") or os.environ.get(ENV_NUM, 0) or 0)
    pid = cfg.get("process_id", -1)
    pid = int(pid if pid is not None and pid >= 0 else os.environ.get(ENV_ID, -1))
    if not address and not num:
        return None
    missing = [n for n, bad in (("coordinator_address", not address), ("num_processes", num <= 0),
                                ("process_id", pid < 0)) if bad]
    if missing:
        raise ValueError(f"multi-process settings are incomplete: missing {missing} (set config.distributed.* or "
                         f"{ENV_COORDINATOR}/{ENV_NUM}/{ENV_ID})")
    if not 0 <= pid < num:
        raise ValueError(f"process_id={pid} is outside [0, num_processes={num})")
    out = {"coordinator_address": address, "num_processes": num, "process_id": pid}
    ids = cfg.get("local_device_ids") or ""
    if ids:
        out["local_device_ids"] = [int(i) for i in str(ids).split(",")]
    return out


def _detected_cluster() -> str:
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("CLOUD_TPU_TASK_ID") is not None:
        return "tpu"
    return ""


def initialize(cfg: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
    """Joins the processes (if any) before any JAX computation; returns what was done. Idempotent."""
    global _initialized
    import jax
    mode = (cfg or {}).get("mode", "auto") if cfg is not None else "auto"
    if mode not in ("auto", "single", "explicit"):
        raise ValueError(f"config.distributed.mode={mode!r}; choose auto, single or explicit")
    if _initialized or mode == "single":
        return {"mode": "single" if not _initialized else "already", "process_count": jax.process_count()}
    timeout = int((cfg or {}).get("initialization_timeout_s", 300) if cfg is not None else 300)
    explicit = _explicit_settings(cfg)
    if mode == "explicit" and explicit is None:
        raise ValueError("config.distributed.mode=explicit needs coordinator_address, num_processes and process_id")
    kind = "explicit" if explicit else _detected_cluster()
    if not kind:
        return {"mode": "single", "process_count": 1}
    if explicit and explicit["process_id"] != 0:
        # jax aborts the whole process (C++ LOG(FATAL)) when the coordinator never answers, so probe it first
        # and fail with a message instead.
        _wait_for_coordinator(explicit["coordinator_address"], timeout)
    try:
        if explicit:
            jax.distributed.initialize(initialization_timeout=timeout, **explicit)
        else:
            jax.distributed.initialize(initialization_timeout=timeout)
    except Exception as e:  # jax raises assorted types (RuntimeError, XlaRuntimeError, DEADLINE_EXCEEDED)
        where = explicit["coordinator_address"] if explicit else f"the {kind} coordinator"
        raise RuntimeError(
            f"could not join the JAX processes at {where} within {timeout}s ({type(e).__name__}: {e}). Check that "
            f"every process was started with the same coordinator address and process count, that process 0 is "
            f"running, and that the port is reachable from this host.") from None
    _initialized = True
    info = {"mode": kind, "process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "devices": jax.device_count()}
    _log.info("joined %s", info)
    return info


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    import socket
    import time
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            last = e
            time.sleep(0.5)
    raise RuntimeError(
        f"could not join the JAX processes at {address} within {timeout_s:.0f}s: nothing answers there ({last}). "
        f"Start process 0 (it hosts the coordinator) with the same address, and check that the port is reachable "
        f"from this host.")


def config_fingerprint(config: ml_collections.ConfigDict) -> str:
    """A hash of the config minus per-process fields, to check that every process runs the same job."""
    d = config.to_dict()
    d.pop("distributed", None)
    return hashlib.sha256(repr(sorted(_flatten(d).items())).encode()).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = repr(d)
    return out


def check_processes_agree(config: ml_collections.ConfigDict) -> None:
    """Fails on every process, naming the ones that differ, if the processes were given different configs."""
    import jax
    import numpy as np
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils
    mine = np.frombuffer(bytes.fromhex(config_fingerprint(config)), dtype=np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
        raise RuntimeError(f"processes {differ} run a different config than process 0 (compare their resolved "
                           f"configs); every process must get the same --config and overrides")
