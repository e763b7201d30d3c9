"""Orbax checkpoints of a training run: train state, data iterator state, and run metadata in one step directory.

Orbax writes each step to a temporary directory and renames it when complete, so `latest_step()` only ever sees
complete checkpoints: a crash mid-save leaves the previous one as the latest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_log = logging.getLogger(__name__)


def _is_grain_iterator(it: Any) -> bool:
    try:
        import grain
    except ImportError:  # pragma: no cover - grain is a core dependency
        return False
    return isinstance(it, getattr(grain, "DatasetIterator", ())) or type(it).__module__.startswith("grain")


def _process_index_and_count() -> tuple[int, int]:
    """The process index and count that Grain's checkpoint handler names its files with (jax's)."""
    try:
        from grain._src.core import sharding
    except ImportError:  # pragma: no cover - the function moved: it is jax's process index and count
        return jax.process_index(), jax.process_count()
    return sharding.get_process_index_and_count()


_PROCESS_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def saved_process_count(data_dir: str) -> int | None:
    """How many processes wrote the Grain iterator states in `data_dir` (one `process_<i>-of-<n>.json` each, as
    grain.checkpoint.CheckpointHandler names them); None when it holds none."""
    if not os.path.isdir(data_dir):
        return None
    counts = {int(m.group(2)) for m in map(_PROCESS_FILE.fullmatch, os.listdir(data_dir)) if m}
    if len(counts) > 1:
        raise ValueError(f"{data_dir} holds data states of {sorted(counts)} processes; expected one process count")
    return counts.pop() if counts else None


def moved_data_state(data_dir: str, saved_count: int, iterator, process_index: int, process_count: int) -> dict:
    """This process's data iterator state from the states that `saved_count` processes (another number) saved in
    `data_dir`: every process reads all their files and keeps its share of the row slots
    (bolt_jax.data.row_slots.move_slot_states; it refuses another global batch)."""
    from bolt_jax.data.row_slots import move_slot_states

    states = []
    for i in range(saved_count):
        path = os.path.join(data_dir, f"process_{i}-of-{saved_count}.json")
        if not os.path.exists(path):
            raise ValueError(f"{path} is missing: the data state of all {saved_count} processes that saved the "
                             "checkpoint is needed to resume on another number of processes")
        with open(path) as f:
            states.append(json.loads(f.read()))
    return move_slot_states(states, iterator.get_state(), process_index, process_count)


class TrainCheckpointer:
    """Async saves at an interval, a keep policy, automatic restore of the latest complete step."""

    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True,
                 keep_period: int | None = None):
        """`keep_period`: also keep every checkpoint whose step is a multiple of it (the evaluated ones)."""
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, keep_period=keep_period,
                                                 enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def _data_args(self, iterator, restore: bool):
        if iterator is None:
            return None
        if _is_grain_iterator(iterator):
            import grain
            return (grain.checkpoint.CheckpointRestore(iterator) if restore
                    else grain.checkpoint.CheckpointSave(iterator))
        if restore:
            return ocp.args.JsonRestore()
        return ocp.args.JsonSave(iterator.get_state())

    def save(self, step: int, state: Any, iterator=None, meta: dict | None = None, *, force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
        data = self._data_args(iterator, restore=False)
        if data is not None:
            items["data"] = data
        saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            _log.info("checkpoint %d dispatched to %s", step, self.directory)
        return saved

    def _moved_data_state(self, step: int, iterator) -> dict | None:
        """The iterator's state when another number of processes saved it (None: the same number, restored by
        Grain's handler as always)."""
        if iterator is None or not _is_grain_iterator(iterator):
            return None
        data_dir = os.path.join(str(ocp.step.find_step_path(self.directory, ocp.step.standard_name_format(),
                                                             step=step)), "data")
        saved = saved_process_count(data_dir)
        index, count = _process_index_and_count()
        if saved is None or saved == count:
            return None
        _log.info("data state of step %d: saved by %d processes, moved to %d", step, saved, count)
        return moved_data_state(data_dir, saved, iterator, index, count)

    def restore(self, step: int, abstract_state: Any, iterator=None) -> tuple[Any, dict]:
        """Restores into `abstract_state`'s shardings (ShapeDtypeStructs with .sharding); sets the iterator's state,
        also when another number of processes saved it (the corpus pipeline's row slots are redistributed)."""
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        moved = self._moved_data_state(step, iterator)
        data = None if moved is not None else self._data_args(iterator, restore=True)
        if data is not None:
            items["data"] = data
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if moved is not None:
            iterator.set_state(moved)
            iterator.start_prefetch()
        elif iterator is not None and not _is_grain_iterator(iterator):
            iterator.set_state(restored["data"])
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def finished_steps(directory: str) -> list[int]:
    """The complete checkpoints in `directory` (none if it does not exist), read without opening a manager."""
    if not os.path.isdir(directory):
        return []
    return sorted(ocp.utils.checkpoint_steps(directory))


# What a run writes next to its checkpoints and that describes them: moved aside with them on a restart.
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "summary.json", "model", "tensorboard", "wandb")


def move_aside(run_dir: str, outputs: tuple[str, ...] = RUN_OUTPUTS) -> str:
    """Renames `run_dir/checkpoints` to the first free `run_dir/checkpoints.stale-<n>` (n = 1, 2, ...) and moves the
    run outputs that belong to those checkpoints (`outputs`, where present: the config they were written under, their
    metrics, summary and exported model) into it, so that a fresh run starts clean. Nothing is deleted; the moved
    directory still opens as a checkpoint directory. Returns its path. Process 0 moves; every process waits for it."""
    run_dir = os.path.abspath(run_dir)

    def stale(n: int) -> str:
        return os.path.join(run_dir, f"checkpoints.stale-{n}")

    n = 1
    while os.path.exists(stale(n)):
        n += 1
    if jax.process_count() > 1:  # process 0's choice, for every process
        from jax.experimental import multihost_utils
        n = int(multihost_utils.broadcast_one_to_all(np.int32(n)))
    if jax.process_index() == 0:
        os.rename(os.path.join(run_dir, "checkpoints"), stale(n))
        for name in outputs:
            if os.path.exists(os.path.join(run_dir, name)):
                os.rename(os.path.join(run_dir, name), os.path.join(stale(n), name))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("bolt_jax.train.checkpointing.move_aside")
    return stale(n)


class PreemptionWatcher:
    """SIGTERM/SIGINT set a flag; the loop saves at the next step boundary and exits cleanly.

    A second SIGINT falls through to the default handler (so Ctrl-C twice still kills a stuck run).
    """

    def __init__(self):
        self.requested = threading.Event()
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self.requested.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def should_stop(self, step: int) -> bool:
        """True on every process once any process was signalled (multi-host: JAX's preemption sync point)."""
        if jax.process_count() > 1:
            try:
                from jax.experimental import multihost_utils
                if multihost_utils.reached_preemption_sync_point(step):
                    return True
            except Exception:  # the preemption service is only present under jax.distributed
                pass
        return self.requested.is_set()
