"""The record of a multi-stage run (`run_dir/manifest.json`): which stages are done, under which settings.

Each stage is keyed by the resolved settings it depends on: the config sections that determine its result, the size
of every input file it reads, and the keys of the stages it builds on (so a change reaches everything downstream).
A rerun skips a finished stage only when its key is unchanged. When a setting changed, the run stops before doing
anything, naming the changed keys (`bootstrap.on_change=refuse`, the default), or redoes the changed stage and every
stage after it (`on_change=rerun`). What does not change a result is left out of the key: where output goes
(`run_dir`), logging and checkpoint cadence, the progress bar, the sampler's scheduler and slots and the E-step's
overlap (same samples), the mesh (same model, up to float rounding), and the bootstrap's list of stages (adding an
iteration reuses the others).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bolt_jax.config import flatten
from bolt_jax.runtime import console
from bolt_jax.runtime.atomic import atomic_write_text

log = logging.getLogger("bolt_jax.workflows.manifest")
ON_CHANGE = ("refuse", "rerun")
# settings that never change what a stage computes
IGNORED = {"run_dir", "workflow", "train.progress_bar", "train.log_every", "train.save_every",
           "train.keep_checkpoints", "train.eval_every", "train.eval_batches", "estep.scheduler",
           "estep.decode_slots", "estep.prefix_sharing", "estep.prompt_entries", "estep.overlap", "estep.slice",
           "estep.store_dir", "estep.output_path",
           "estep.run_name", "train.on_change", "bootstrap.on_change", "bootstrap.console",
           "bootstrap.compilation_cache", "train.tracker",
           "data.worker_count", "data.prefetch_threads", "data.read_threads"}
# path settings whose file is an input: its size is part of the key (content changes that keep the size are not seen)
INPUT_FILES = ("data.train_path", "data.validation_path", "estep.corpus_path", "bootstrap.pretrain_path",
               "bootstrap.warmstart_path", "bootstrap.bootstrap_path")


class StaleStageError(RuntimeError):
    """A finished stage was computed under other settings than this run's."""


def stage_settings(config, sections: Iterable[str], upstream: Mapping[str, str] = ()) -> dict[str, Any]:
    """The flat settings a stage's result depends on: `sections` of `config` (minus IGNORED), input file sizes,
    and the keys of the stages it reads (`upstream`: stage name -> key)."""
    plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    flat = {k: v for k, v in flatten({s: plain[s] for s in sections if s in plain}).items() if k not in IGNORED}
    for key in INPUT_FILES:
        path = flat.get(key)
        if isinstance(path, str) and path and os.path.isfile(path):
            flat[f"{key}:size"] = os.path.getsize(path)
    flat.update({f"upstream.{name}": key for name, key in dict(upstream).items()})
    return flat


def settings_key(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 6) -> str:
    """'train.steps: 300 -> 400, model.hidden_size: 128 -> 64' (upstream changes named by stage)."""
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
    parts = [f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" if not k.startswith("upstream.")
             else f"stage {k[len('upstream.'):]} was redone" for k in changed]
    more = f" (+{len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


class Manifest:
    """`defaults` (flat, "data.seq_len": ...): the default of every key a later version may add to a section; a
    stage recorded before the key existed counts as computed under its default (so a new setting left at its
    default does not make every finished stage stale)."""

    def __init__(self, run_dir: str, on_change: str = "refuse", defaults: Mapping[str, Any] | None = None,
                 stage_logs: bool = False):
        if on_change not in ON_CHANGE:
            raise ValueError(f"bootstrap.on_change={on_change!r}; choose one of {ON_CHANGE}")
        self.path = os.path.join(run_dir, "manifest.json")
        # stage_logs: each stage's log lines and printed output go to <run_dir>/logs/<stage>.log, the console keeps
        # one line at each stage's start and end (bootstrap.console="stages")
        self.stage_log_dir = os.path.join(run_dir, "logs") if stage_logs else None
        self.on_change = on_change
        self.defaults = dict(defaults or {})
        self.stages: dict[str, Any] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.stages = json.load(f)

    def done(self, name: str) -> bool:
        return self.stages.get(name, {}).get("status") == "done"

    def key(self, name: str) -> str | None:
        return self.stages.get(name, {}).get("key")

    def record(self, name: str, outputs: dict[str, Any], seconds: float, settings: Mapping[str, Any]) -> None:
        self.stages[name] = {"status": "done", "outputs": outputs, "seconds": seconds, "finished": time.time(),
                             "key": settings_key(settings), "settings": dict(settings)}
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.stages, indent=2, default=str))

    def outputs(self, name: str) -> dict[str, Any]:
        return self.stages[name]["outputs"]

    def is_current(self, name: str, settings: Mapping[str, Any]) -> bool:
        """Done under these settings. Done under others: refuse (StaleStageError) or, with on_change=rerun, say so
        and return False so the stage runs again. An adopted stage (`adopt`) is compared without the settings it
        was adopted across."""
        if not self.done(name):
            return False
        stage = self.stages[name]
        if stage.get("key") == settings_key(settings):
            return True
        old = stage.get("settings")
        if old is not None:  # keys added since the stage was recorded: their defaults
            old = {**{k: self.defaults[k] for k in settings if k not in old and k in self.defaults}, **old}
            if settings_key(old) == settings_key(settings):
                return True
        ignored = stage.get("adopted_across")
        if ignored is not None and _without(old or {}, ignored) == _without(settings, ignored):
            return True
        what = describe_changes(old, settings) if old is not None else "it was recorded without its settings"
        if self.on_change == "refuse":
            raise StaleStageError(
                f"stage {name} in {os.path.dirname(self.path)} was computed under other settings ({what}); rerun "
                f"with --config.bootstrap.on_change=rerun to redo it and every later stage, or use another run_dir")
        print(f"stage {name}: settings changed ({what}); redoing it and every later stage")
        return False


def _without(settings: Mapping[str, Any], ignored: Iterable[str]) -> dict[str, Any]:
    """`settings` without the keys in `ignored` (an entry ending in "." drops every key it starts)."""
    ignored = tuple(ignored)
    return {k: v for k, v in settings.items()
            if k not in ignored and not any(i.endswith(".") and k.startswith(i) for i in ignored)}


def adopt(manifest: Manifest, source: Manifest, name: str, ignored: Iterable[str]) -> bool:
    """Takes the finished stage `name` of another run (`source`) as this run's, to be compared with this run's
    settings without `ignored` (the paper's trials: trial 1 trains its M-steps on trial 0's E-step data, so the
    seed and the model that sampled differ). False when the source has not finished it. A stage this run computed
    itself is never replaced: StaleStageError."""
    if not source.done(name):
        return False
    source_dir = os.path.dirname(source.path)
    mine = manifest.stages.get(name, {})
    if mine.get("status") == "done" and mine.get("adopted_from") != source_dir:
        raise StaleStageError(f"stage {name} was computed in {os.path.dirname(manifest.path)} itself; it cannot be "
                              f"taken from {source_dir} as well: use another run_dir")
    manifest.stages[name] = dict(source.stages[name], adopted_from=source_dir, adopted_across=sorted(ignored))
    manifest.save()
    return True


def move_aside(path: str) -> str | None:
    """Renames `path` to the first free `<path>.stale-<n>` (nothing is deleted); None when it does not exist."""
    if not os.path.exists(path):
        return None
    n = 1
    while os.path.exists(f"{path}.stale-{n}"):
        n += 1
    os.replace(path, f"{path}.stale-{n}")
    return f"{path}.stale-{n}"


def run_stage(manifest: Manifest, name: str, settings: Mapping[str, Any], fn: Callable[[], dict[str, Any]],
              work_dirs: Iterable[str] = ()) -> tuple[dict[str, Any], str]:
    """(outputs, key) of a stage: recorded ones when current, else `fn()` run and recorded.

    `work_dirs` hold the stage's resumable work (trainer checkpoints, E-step shards). When a finished stage is
    redone under changed settings they are moved aside first: the trainer would otherwise continue the old run and
    the E-step store reuse shards written by the old model at the same checkpoint path. (An unfinished stage keeps
    them: a crashed run resumes.)"""
    if manifest.is_current(name, settings):
        log.info("stage %s: done before under the same settings, skipped", name)
        return manifest.outputs(name), manifest.key(name)
    if manifest.done(name):
        for path in work_dirs:
            moved = move_aside(path)
            if moved:
                print(f"stage {name}: its earlier work is kept at {moved}")
    log_path = os.path.join(manifest.stage_log_dir, f"{name}.log") if manifest.stage_log_dir else None
    print(f"=== bootstrap stage: {name}", flush=True)
    t0 = time.perf_counter()
    try:
        with console.stage_output(log_path):
            out = fn()
    except BaseException:
        print(f"    {name} failed after {time.perf_counter() - t0:.0f} s"
              + (f": its log is {log_path}" if log_path else ""), flush=True)
        raise
    seconds = time.perf_counter() - t0
    manifest.record(name, out, seconds, settings)
    print(f"    {name} done in {seconds:.0f} s", flush=True)
    return out, manifest.key(name)
