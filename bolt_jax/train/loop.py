"""The M-step training loop: sharded state, async metrics, validation, checkpoints with exact resume.

Resume is automatic: if `run_dir/checkpoints` holds a complete checkpoint, the run continues from it (params,
optimizer state, step, RNG and the data iterator's position), and the losses that follow equal those of an
uninterrupted run. It continues only under the settings the checkpoints were written with (`resume_settings`;
`train.on_change` says what to do otherwise), and only from finite values: a step whose loss, gradient or update is
not finite stops the run before it is checkpointed, and a non-finite checkpoint is never resumed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bolt_jax import parallel
from bolt_jax.config import RUNTIME_OVERRIDES, flatten, llama_config
from bolt_jax.model import Llama, LlamaConfig
from bolt_jax.model.llama import pure_dict
from bolt_jax.runtime import console
from bolt_jax.train import batches as batches_lib
from bolt_jax.train.checkpointing import PreemptionWatcher, TrainCheckpointer, finished_steps, move_aside
from bolt_jax.train.metrics import MetricsWriter, device_peak_flops, validate_tracker
from bolt_jax.train.optim import default_optim_config, lr_schedule, make_optimizer
from bolt_jax.train.step import BATCH_KEYS, CATEGORIES, all_finite, make_eval_step, make_train_step

_log = logging.getLogger("bolt_jax.train")
KILL_AFTER_SAVE_ENV = "BOLT_TEST_SIGKILL_AFTER_STEP"  # test hook: SIGKILL self once this step's checkpoint is on disk


class NonFiniteLossError(RuntimeError):
    """A step's loss, gradient or update was not finite: the run stops before that state is checkpointed."""


class NonFiniteCheckpointError(NonFiniteLossError):
    """The checkpoint a run would resume from holds non-finite values (written before updates were checked)."""


class ChangedSettingsError(ValueError):
    """The run_dir's checkpoints were written under other settings than this run's (see `resume_settings`)."""


def default_train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "steps": 1000,
        "global_batch_size": 8,  # sequences per optimizer step, over all processes
        "micro_batch_size": 0,  # sequences per accumulation micro-step; 0 = no accumulation
        "init_checkpoint": "",  # a model checkpoint (python -m convert hf-to-orbax); "" = random init
        "log_every": 10,  # steps between metric records and console lines (step / loss / tokens/s / MFU / ETA)
        "eval_every": 0,  # validation loss interval in steps; 0 = off
        "eval_batches": 4,
        "save_every": 500,
        "keep_checkpoints": 2,
        "async_checkpoint": True,
        "loss_chunk_size": 512,  # positions per head/log-softmax chunk (memory); 0 = whole sequence
        "progress_bar": True,  # a tqdm bar when stderr is a terminal (never in a log file); False: lines only
        # Where metrics go besides run_dir/metrics.jsonl: "tensorboard" (run_dir/tensorboard, needs tensorboardX),
        # "wandb" (Weights & Biases, pip install 'bolt_jax[wandb]'; WANDB_MODE=offline writes run_dir/wandb),
        # "tensorboard,wandb", or "none".
        "tracker": "tensorboard",
        # At the end, write the final params as a model checkpoint (run_dir/model: what the sampler, E-step,
        # evaluation and `convert orbax-to-hf` load).
        "export_model": True,
        # A rerun into a run_dir whose checkpoints were written under other settings (see `resume_settings`):
        # "refuse" (stop before compiling, naming the changed keys) or "restart" (move the old checkpoints and
        # outputs aside to run_dir/checkpoints.stale-<n>, never deleting them, and start fresh).
        "on_change": "refuse",
    })


def accum_steps(config: ml_collections.ConfigDict) -> int:
    t = config.train
    micro = t.micro_batch_size or t.global_batch_size
    if t.global_batch_size % micro:
        raise ValueError(f"config.train.global_batch_size={t.global_batch_size} is not a multiple of "
                         f"config.train.micro_batch_size={micro}")
    return t.global_batch_size // micro


def validate_train_config(config: ml_collections.ConfigDict) -> None:
    from bolt_jax.config import validate_mesh
    t = config.train
    a = accum_steps(config)
    shape = dict(zip(parallel.MESH_AXES, validate_mesh(config)))
    divisor = shape["data"] * shape["fsdp"]
    micro = t.global_batch_size // a
    if micro % divisor:
        raise ValueError(f"the micro-batch ({micro} sequences) must be a multiple of data x fsdp = {divisor} "
                         f"devices; change config.train.global_batch_size/micro_batch_size or config.mesh")
    if t.steps <= 0 or t.save_every <= 0 or t.log_every <= 0:
        raise ValueError("config.train.steps, save_every and log_every must be positive")
    validate_tracker(t.get("tracker", "tensorboard"))
    on_change = t.get("on_change", "refuse")
    if on_change not in ON_CHANGE:
        raise ValueError(f"config.train.on_change={on_change!r}; choose one of {ON_CHANGE}")
    if on_change == "refuse" and not config.get("dry_run", False):
        reconcile_run_dir(config)  # raises ChangedSettingsError when resuming under other settings


# --------------------------------------------------------------------------------------------------- resume
ON_CHANGE = ("refuse", "restart")
_RESUME_TRAIN_KEYS = ("global_batch_size", "init_checkpoint")
_RESUME_IGNORED_DATA = ("prefetch_threads", "worker_count", "read_threads")  # speed settings: the same batches


def resume_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat settings (`"model.hidden_size": 64`, ...) of a plain config dict (config.json) that determine what a
    run computes, so a run may only resume checkpoints written under the same ones. They are:

    - `model.*`, the architecture and parameter dtype (what the checkpoint's arrays are), except the runtime settings
      of `bolt_jax.config.RUNTIME_OVERRIDES` (kernels, compute precision, remat, layer scan: how to compute, not what);
    - `optim.*`, all of it (learning rate and schedule, betas, eps, weight decay, clipping): the update rule;
    - `data.*`, the source, paths, format, sequence length, packing, loss weights, data seed and batch: which tokens
      each step sees (except `prefetch_threads`, `worker_count` and `read_threads`, speed settings that yield the
      same batches);
    - `train.global_batch_size` and `train.init_checkpoint`: what one step averages over, where the run began;
    - `seed`: the initialization and the synthetic data.

    Left out, because they do not change what the remaining steps compute or may change between legs of one run:
    `train.steps` (raising it continues a run; note that it also stretches the cosine schedule's tail), the cadence
    and output keys (log/eval/save intervals, eval_batches, keep/async checkpoints, progress bar, tracker,
    export_model, on_change), `train.micro_batch_size` and `loss_chunk_size` (accumulation and chunking give the same
    gradient up to float rounding), the mesh and rules (layout only), `run_dir` and the other workflows' sections.
    """
    model = {k: v for k, v in flatten(config.get("model", {}), "model.").items()
             if k.split(".", 1)[1] not in RUNTIME_OVERRIDES}
    data = {k: v for k, v in flatten(config.get("data", {}), "data.").items()
            if k.split(".", 1)[1] not in _RESUME_IGNORED_DATA}
    train = config.get("train", {})
    out = {**model, **flatten(config.get("optim", {}), "optim."), **data}
    out.update({f"train.{k}": train[k] for k in _RESUME_TRAIN_KEYS if k in train})
    if "seed" in config:
        out["seed"] = config["seed"]
    return out


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`"key: old -> new"` for each key whose value differs (NaN equals NaN; a key one side lacks is <unset>)."""
    def same(a, b):
        return a == b or json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    unset = "<unset>"
    return [f"{k}: {old.get(k, unset)} -> {new.get(k, unset)}" for k in sorted(set(old) | set(new))
            if not same(old.get(k, unset), new.get(k, unset))]


def settings_changes(config: ml_collections.ConfigDict) -> list[str]:
    """The resume settings that differ between `config` and the run_dir's config.json, when run_dir holds a
    checkpoint to resume from; [] when it holds none (or no config.json to compare with: warned)."""
    run_dir = os.path.abspath(config.run_dir)
    if not finished_steps(os.path.join(run_dir, "checkpoints")):
        return []
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        _log.warning("%s holds checkpoints but no config.json: cannot check they were written under this run's "
                     "settings", run_dir)
        return []
    with open(path) as f:
        old = resume_settings(json.load(f))
    new = resume_settings(json.loads(config.to_json_best_effort()))
    defaults = resume_defaults()  # a key added since the run began counts as its default
    return changed_settings({**{k: defaults[k] for k in new if k not in old and k in defaults}, **old}, new)


def resume_defaults() -> dict[str, Any]:
    """The resume settings of the default data, optimizer and trainer sections."""
    from bolt_jax.data.pipeline import default_data_config
    return resume_settings({"data": default_data_config().to_dict(), "optim": default_optim_config().to_dict(),
                            "train": default_train_config().to_dict()})


def reconcile_run_dir(config: ml_collections.ConfigDict) -> str | None:
    """Before anything is built: when run_dir's checkpoints were written under other resume settings, refuse with a
    one-line ChangedSettingsError naming them (`train.on_change="refuse"`) or move the checkpoints and their outputs
    aside (`"restart"`) and return where they went. None when there is nothing to do."""
    changes = settings_changes(config)
    if not changes:
        return None
    run_dir = os.path.abspath(config.run_dir)
    latest = max(finished_steps(os.path.join(run_dir, "checkpoints")))
    if config.train.get("on_change", "refuse") != "restart":
        raise ChangedSettingsError(
            f"{run_dir} holds checkpoints (up to step {latest}) written under other settings: {'; '.join(changes)}. "
            f"Rerun with --config.train.on_change=restart to move them aside to {run_dir}/checkpoints.stale-<n> and "
            f"start fresh, use another config.run_dir, or go back to the old settings (train.steps may change)")
    dest = move_aside(run_dir)
    if jax.process_index() == 0:
        print(f"settings changed ({'; '.join(changes)}): moved the checkpoints (up to step {latest}) and outputs of "
              f"the old run to {dest}; starting fresh")
    return dest


# --------------------------------------------------------------------------------------------------- state
def uses_document_mask(config: ml_collections.ConfigDict) -> bool:
    """Whether attention must stay inside documents: `data.packing="document"`, or synthetic rows of several
    documents. The original's `concat` packing makes each row one causal stream (no segment ids needed)."""
    data = config.data
    if data.get("source", "corpus") == "synthetic":
        return data.get("synthetic_docs_per_row", 1) > 1
    return data.get("packing", "concat") == "document"


class TrainSetup:
    """Everything a run needs, built once: mesh, model graph, optimizer, shardings, jitted step."""

    def __init__(self, config: ml_collections.ConfigDict, devices: Sequence[Any] | None = None):
        """`devices`: the mesh's devices (default: every local device); an ahead-of-time dry run passes a TPU
        topology's devices or simulated CPU devices (bolt_jax.aot)."""
        self.config = config
        self.model_cfg: LlamaConfig = llama_config(config.model)
        self.mesh = parallel.make_mesh(dict(config.mesh), devices)
        self.rules = parallel.normalize_rules(dict(config.rules))
        self.accum = accum_steps(config)
        self.tx = make_optimizer(config.optim, config.train.steps)
        self.schedule = lr_schedule(config.optim, config.train.steps)
        abstract_model = nnx.eval_shape(lambda: Llama(self.model_cfg, nnx.Rngs(0)))
        # Params travel as a plain nested dict of arrays (nnx.merge takes it), so optax and Orbax see a plain tree.
        self.graphdef, abstract_state = nnx.split(abstract_model)
        abstract_params = pure_dict(abstract_state)
        self.param_shardings = pure_dict(parallel.state_shardings(abstract_state, self.mesh, self.rules))
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        replicated = NamedSharding(self.mesh, P())
        opt_shardings = optax.tree_map_params(self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
                                              transform_non_params=lambda _: replicated)
        self.shardings = {"params": self.param_shardings, "opt_state": opt_shardings, "step": replicated,
                          "rng": replicated}
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            {"params": abstract_params, "opt_state": abstract_opt,
             "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)},
            self.shardings)
        seq = config.data.seq_len
        batch_sharding = parallel.batch_sharding(self.mesh, 2)
        self.abstract_batch = {k: jax.ShapeDtypeStruct((config.train.global_batch_size, seq),
                                                       jnp.float32 if k == "loss_weights" else
                                                       jnp.int8 if k == "categories" else jnp.int32,
                                                       sharding=batch_sharding) for k in BATCH_KEYS}
        self.document_mask = uses_document_mask(config)
        step = make_train_step(self.graphdef, self.tx, self.schedule, accum_steps=self.accum,
                               loss_chunk_size=config.train.loss_chunk_size, document_mask=self.document_mask)
        self.train_step = jax.jit(step, donate_argnums=(0,), out_shardings=(self.shardings, replicated))
        self.eval_step = jax.jit(make_eval_step(self.graphdef, config.train.loss_chunk_size, self.document_mask),
                                 out_shardings=replicated)

    def mesh_context(self):
        return parallel.use_mesh(self.mesh, self.rules)

    def init_state(self) -> dict[str, Any]:
        """Fresh state, every array created directly in its sharding."""
        init_ckpt = self.config.train.init_checkpoint
        with self.mesh_context():
            if init_ckpt:
                from bolt_jax.model.artifact import load_model
                model, loaded_cfg, _ = load_model(init_ckpt, self.mesh, rules=self.rules)
                _check_same_architecture(loaded_cfg, self.model_cfg, init_ckpt)
                params = pure_dict(nnx.state(model, nnx.Param))
                params = jax.tree.map(lambda x, s: jax.device_put(x.astype(self.model_cfg.jnp_param_dtype), s),
                                      params, self.param_shardings)
            else:
                from bolt_jax.model import create_model
                params = pure_dict(nnx.state(
                    create_model(self.model_cfg, self.mesh, seed=self.config.seed, rules=self.rules), nnx.Param))
            opt_state = jax.jit(self.tx.init, out_shardings=self.shardings["opt_state"])(params)
            rng = jax.device_put(jax.random.key_data(jax.random.PRNGKey(self.config.seed)).astype(jnp.uint32),
                                 self.shardings["rng"])
            step = jax.device_put(jnp.zeros((), jnp.int32), self.shardings["step"])
        return {"params": params, "opt_state": opt_state, "step": step, "rng": rng}


def _check_same_architecture(loaded: LlamaConfig, wanted: LlamaConfig, path: str) -> None:
    runtime = set(LlamaConfig().runtime_dict())
    diffs = [f"{f.name}: checkpoint {getattr(loaded, f.name)} vs config {getattr(wanted, f.name)}"
             for f in dataclasses.fields(LlamaConfig) if f.name not in runtime and f.name != "initializer_range"
             and getattr(loaded, f.name) != getattr(wanted, f.name)]
    if diffs:
        raise ValueError(f"config.train.init_checkpoint={path} does not match config.model: " + "; ".join(diffs)
                         + " (set config.model.hf_config to the checkpoint's config.json, or fix config.model)")


# --------------------------------------------------------------------------------------------------- dry run
def _bytes_per_device(tree) -> int:
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += int(np.prod(shard)) * np.dtype(x.dtype).itemsize
    return total


def dry_run(config: ml_collections.ConfigDict, sampler: bool | None = None) -> dict[str, Any]:
    """Compiles the train step for the configured mesh without allocating the state; prints per-device memory. With
    `config.aot_topology`, for that topology instead (a TPU slice, N GPUs, or N CPU devices standing in for GPUs), and
    with `sampler` (None: where the config has an `estep` section) the E-step's prefill, decode and scorer too, with
    collectives and a roofline step time (bolt_jax.aot.report)."""
    from bolt_jax.aot import report as aot
    if config.get("aot_topology"):
        config, target, devices = aot.prepare(config)
        sampler = "estep" in config if sampler is None else sampler
        return aot.run(config, TrainSetup(config, devices), target, sampler=sampler)
    setup = TrainSetup(config)
    t0 = time.perf_counter()
    with setup.mesh_context():
        compiled = setup.train_step.lower(setup.abstract_state, setup.abstract_batch).compile()
    compile_s = time.perf_counter() - t0
    gib = 1024 ** 3
    report = {
        "params_gib": _bytes_per_device(setup.abstract_state["params"]) / gib,
        "optimizer_gib": _bytes_per_device(setup.abstract_state["opt_state"]) / gib,
        "batch_gib": _bytes_per_device(setup.abstract_batch) / gib,
        "compile_s": compile_s,
    }
    mem = aot.memory_bytes(compiled)
    if mem is not None:
        report["temp_gib"] = mem["temps"] / gib  # activations and other scratch
        report["arguments_gib"] = mem["arguments"] / gib
        report["outputs_gib"] = mem["outputs"] / gib
        report["alias_gib"] = mem["aliased"] / gib
        report["total_gib"] = mem["total"] / gib
    if jax.process_index() == 0:
        print(f"dry run on {parallel.mesh_summary(setup.mesh)}: global batch {config.train.global_batch_size} x "
              f"{config.data.seq_len}, {setup.accum} micro-step(s), remat={setup.model_cfg.remat_policy}")
        for k, v in report.items():
            print(f"  {k:15s} {v:10.3f}")
    return report


# --------------------------------------------------------------------------------------------------- loop
def _summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def evaluate(setup: TrainSetup, params, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Validation loss on held-out raw documents: token-weighted mean over `eval_batches` batches."""
    source = batches_lib.make_train_batches(config, setup.model_cfg.vocab_size, split="validation")
    totals: dict[str, float] = {}
    try:
        for _ in range(config.train.eval_batches):
            try:
                batch = next(source)
            except StopIteration:
                break
            sums = jax.device_get(setup.eval_step(params, parallel.shard_batch(batch, setup.mesh)))
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + float(v)
    finally:
        getattr(source, "close", lambda: None)()  # a fresh source per evaluation: its worker processes end here
    if not totals or totals["weight"] == 0:
        return {}
    out = {"loss": totals["loss"] / totals["weight"], "tokens": totals["weight"]}
    for c in CATEGORIES:
        if totals[f"count_{c}"] > 0:
            out[f"loss_{c}"] = totals[f"nll_{c}"] / totals[f"count_{c}"]
    return out


TrainState = dict[str, Any]  # {"params", "opt_state", "step", "rng"}: the pytree the jitted step donates and returns


class TrainProgress:
    """The host-side record of a run: per-step losses, the logged metric history, the throughput timer and the bar.

    It exists apart from the loop because a step's metrics are fetched one step late (see `defer`), so checking,
    booking and logging them happen at a different time from the step that produced them.
    """

    def __init__(self, config: ml_collections.ConfigDict, setup: TrainSetup, ckpt: TrainCheckpointer,
                 writer: MetricsWriter, start: int):
        t = config.train
        self.total_steps: int = t.steps
        self.log_every: int = t.log_every
        self.start = start
        self.tokens_per_step: int = t.global_batch_size * config.data.seq_len
        self.flops_per_token: float = setup.model_cfg.flops_per_token(config.data.seq_len)
        self.peak_flops = device_peak_flops()
        self._ckpt = ckpt
        self._writer = writer
        self.losses: dict[int, float] = {}
        self.history: list[dict[str, Any]] = []
        self.pending: tuple[int, dict[str, jax.Array]] | None = None
        self.checked_step = start  # the last step whose metrics passed the finite check
        # the newest checkpoint known to hold finite values: the one resumed from (checked on restore), then each
        # one saved after its step passed the check (StepHooks.save)
        self.last_finite_checkpoint: int | None = ckpt.latest_step()
        # A bar only on a terminal; in a file (SLURM) it would write a line per step, so there the step lines of
        # `_log` are the progress. Log lines go above the bar (bolt_jax.runtime.console).
        self.bar = None
        if t.progress_bar and jax.process_index() == 0 and console.use_bar():
            self.bar = console.progress(total=t.steps, initial=start, desc="train", unit="step")
        # Throughput is measured from the end of the first step of this run (which includes compilation).
        self._timed_since = time.perf_counter()
        self._timed_since_step = start

    def defer(self, step_done: int, metrics_on_device: dict[str, jax.Array]) -> None:
        """Holds this step's metrics and books the previous step's: fetching step n-1's values while step n runs
        keeps the host from stalling the device."""
        if self.pending is not None:
            self.record(*self.pending)
        self.pending = (step_done, metrics_on_device)

    def flush(self) -> None:
        """Books the held step now; called before a checkpoint so that no unchecked state is ever saved."""
        if self.pending is not None:
            step_done, metrics_on_device = self.pending
            self.pending = None
            self.record(step_done, metrics_on_device)

    def record(self, step_done: int, metrics_on_device: dict[str, jax.Array]) -> dict[str, float]:
        """Checks one step's metrics for a non-finite loss, gradient or update, books the loss, advances the bar and
        logs every `log_every` steps (and at the last step)."""
        metrics = {k: float(v) for k, v in jax.device_get(metrics_on_device).items()}
        update_finite = metrics.pop("update_finite", 1.0)
        if not metrics.pop("finite"):
            raise NonFiniteLossError(self._nonfinite_message(step_done, metrics, bool(update_finite)))
        self.checked_step = step_done
        self.losses[step_done] = metrics["loss"]
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
        now = time.perf_counter()
        if self._timed_since_step == self.start:  # the first step includes compilation: time from its end
            self._timed_since, self._timed_since_step = now, step_done
        if step_done % self.log_every == 0 or step_done == self.total_steps:
            self._log(step_done, metrics, now)
        return metrics

    def _nonfinite_message(self, step_done: int, metrics: dict[str, float], update_finite: bool) -> str:
        """What was not finite at `step_done`, and which checkpoint really is the last finite one (if any)."""
        loss, grad_norm = metrics["loss"], metrics["grad_norm"]
        if math.isfinite(loss) and math.isfinite(grad_norm) and not update_finite:
            what = (f"non-finite parameters or optimizer state after the update at step {step_done} (from a finite "
                    f"loss={loss}, grad_norm={grad_norm})")
            hint = "Check config.optim (lr, eps, schedule)."
        else:
            what = f"non-finite loss or gradient at step {step_done} (loss={loss}, grad_norm={grad_norm})"
            hint = "Lower config.optim.lr or check the data."
        last = self.last_finite_checkpoint
        where = (f"The last finite checkpoint is step {last} in {self._ckpt.directory}" if last is not None else
                 f"No checkpoint was written to {self._ckpt.directory}: a rerun starts from scratch")
        return f"{what}; the update was not applied and no checkpoint was written after it. {where}. {hint}"

    def _log(self, step_done: int, metrics: dict[str, float], now: float) -> None:
        """Adds throughput since the last log (and MFU where the device's peak is known), writes the record and logs
        the step line."""
        steps_timed = step_done - self._timed_since_step
        if steps_timed > 0:
            step_time = (now - self._timed_since) / steps_timed
            self._timed_since, self._timed_since_step = now, step_done
            metrics["step_time_s"] = step_time
            metrics["tokens_per_s"] = self.tokens_per_step / step_time
            if self.peak_flops:
                metrics["mfu"] = self.flops_per_token * metrics["tokens_per_s"] / (self.peak_flops * jax.device_count())
        metrics["total_tokens"] = step_done * self.tokens_per_step
        self._writer.write(step_done, metrics)
        self.history.append(dict(metrics, step=step_done))
        _log.info("%s", self.step_line(step_done, metrics))

    def step_line(self, step_done: int, metrics: dict[str, float]) -> str:
        """`step 10/40 | loss 6.2478 | lr 9.68e-04 | tokens/s 22,485 | MFU 31.2% | ETA 0:00:07`: what a log file
        shows of the run (throughput, MFU and ETA once a step has been timed; MFU where the peak is known)."""
        parts = [f"step {step_done}/{self.total_steps}", f"loss {metrics['loss']:.4f}", f"lr {metrics['lr']:.2e}"]
        if "tokens_per_s" in metrics:
            parts.append(f"tokens/s {metrics['tokens_per_s']:,.0f}")
        if "mfu" in metrics:
            parts.append(f"MFU {metrics['mfu']:.1%}")
        if "step_time_s" in metrics:
            parts.append(f"ETA {console.format_eta((self.total_steps - step_done) * metrics['step_time_s'])}")
        return " | ".join(parts)

    def record_evaluation(self, step_done: int, metrics: dict[str, float]) -> None:
        """Metrics of an evaluation during training (few-shot accuracy, NLL, ELBO): metrics.jsonl and the trackers,
        with the training tokens seen (step x global batch x sequence length, packed tokens)."""
        tokens = step_done * self.tokens_per_step
        self._writer.write(step_done, {**metrics, "train_tokens": tokens}, prefix="eval/")
        self.history.append({"step": step_done, "train_tokens": tokens, **{f"eval/{k}": v for k, v in metrics.items()}})
        _log.info("step %d/%d | evaluation: %s", step_done, self.total_steps,
                  ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.endswith("_se"))[:400])

    def record_validation(self, step_done: int, val: dict[str, float]) -> None:
        self._writer.write(step_done, val, prefix="val_")
        self.history.append({"step": step_done, **{f"val_{k}": v for k, v in val.items()}})
        if val:
            _log.info("step %d/%d | validation loss %.4f on %d tokens", step_done, self.total_steps, val["loss"],
                      val["tokens"])
        else:
            _log.warning("step %d: no validation batches (is the validation split empty?); validation loss not "
                         "computed", step_done)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StepHooks:
    """The periodic work between optimizer steps: checkpoint saves (plus the kill-after-save test hook) and
    validation. Kept out of the loop so the loop reads as "step, then hooks", as in Levanter's trainer."""

    def __init__(self, config: ml_collections.ConfigDict, setup: TrainSetup, ckpt: TrainCheckpointer,
                 source: Any, progress: TrainProgress, evaluators: Sequence[Evaluator] = ()):
        self.evaluators = list(evaluators)
        self.config = config
        self.setup = setup
        self.ckpt = ckpt
        self.source = source  # the data iterator, whose position every checkpoint saves for exact resume
        self.progress = progress
        self.kill_after_step = int(os.environ.get(KILL_AFTER_SAVE_ENV, "0") or 0)

    def after_step(self, step_done: int, state: TrainState, preempt: bool) -> None:
        t = self.config.train
        # evaluations first: a kill during one leaves this step's checkpoint unwritten, so the resumed run redoes
        # the step and its evaluation (an evaluated step is never skipped)
        evaluated = self.evaluate(step_done, state)
        if step_done % t.save_every == 0 or step_done == t.steps or preempt or (evaluated and self.keep_evaluated):
            self.save(step_done, state)
        if t.eval_every and step_done % t.eval_every == 0:
            self.progress.record_validation(step_done, evaluate(self.setup, state["params"], self.config))

    @property
    def keep_evaluated(self) -> bool:
        return bool(self.config.get("train_eval", {}).get("keep_eval_checkpoints", False))

    def evaluate(self, step_done: int, state: TrainState) -> bool:
        """Runs the evaluators due at `step_done` on the model of the current parameters; True if any ran."""
        if not self.evaluators:
            return False
        self.progress.flush()  # a non-finite step stops the run before anything evaluates it
        model = nnx.merge(self.setup.graphdef, state["params"])
        metrics: dict[str, float] = {}
        for evaluate_fn in self.evaluators:
            metrics.update(evaluate_fn(step_done, self.config.train.steps, model, self.setup.mesh))
        if metrics:
            self.progress.record_evaluation(step_done, metrics)
        return bool(metrics)

    def save(self, step_done: int, state: TrainState) -> None:
        self.progress.flush()  # never checkpoint a state we have not checked: raises on a non-finite step
        if self.progress.checked_step != step_done:
            raise RuntimeError(f"internal: saving step {step_done} whose metrics were not checked")
        self.ckpt.save(step_done, state, self.source, meta={"config": json.loads(self.config.to_json_best_effort())},
                       force=True)
        self.progress.last_finite_checkpoint = step_done
        if self.kill_after_step and step_done == self.kill_after_step:
            # Test hook: die the hard way once this checkpoint is on disk, to prove resume needs nothing else.
            self.ckpt.wait()
            os.kill(os.getpid(), 9)


def _prepare_run_dir(config: ml_collections.ConfigDict) -> str:
    """Creates the run directory and records the config there, so a run dir alone says how it was produced."""
    run_dir = os.path.abspath(config.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    return run_dir


def _restore_or_init(setup: TrainSetup, ckpt: TrainCheckpointer, source: Any) -> TrainState:
    """The latest complete checkpoint (which also rewinds `source`), or a fresh state when there is none. A checkpoint
    with non-finite values (only a version that did not check updates wrote them) is refused, not resumed."""
    latest = ckpt.latest_step()
    with setup.mesh_context():
        if latest is None:
            return setup.init_state()
        state, _meta = ckpt.restore(latest, setup.abstract_state, source)
        if not bool(jax.jit(all_finite)(state)):
            earlier = [s for s in ckpt.all_steps() if s < latest]
            raise NonFiniteCheckpointError(
                f"checkpoint {latest} in {ckpt.directory} holds non-finite parameters or optimizer state, so it is "
                f"not resumed; move its directory out of {ckpt.directory} to resume from "
                f"{f'step {max(earlier)}' if earlier else 'scratch'}")
        _log.info("resumed from %s step %d", ckpt.directory, latest)
        return state


def _run_steps(setup: TrainSetup, state: TrainState, source: Any, start: int, total_steps: int,
               progress: TrainProgress, hooks: StepHooks) -> tuple[TrainState, str]:
    """Steps from `start` to `total_steps`, or until a preemption signal; returns the final state and what stopped
    the run early ("" when it ran to the end). The state is threaded through because the step donates it."""
    stopped_by = ""
    with setup.mesh_context(), PreemptionWatcher() as watcher:
        for step in range(start, total_steps):
            batch = parallel.shard_batch(next(source), setup.mesh)
            state, metrics = setup.train_step(state, batch)
            step_done = step + 1
            progress.defer(step_done, metrics)
            preempt = watcher.should_stop(step_done)
            hooks.after_step(step_done, state, preempt)
            if preempt:
                stopped_by = watcher.signal_name or "preemption"
                break
        progress.flush()
    return state, stopped_by


# an evaluation during training: (step, total steps, model, mesh) -> flat metrics ({} when none is due)
Evaluator = Callable[[int, int, Any, Any], dict[str, float]]


def train(config: ml_collections.ConfigDict, evaluators: Sequence[Evaluator] = ()) -> dict[str, Any]:
    """Runs (or resumes) training; returns a summary with the per-step losses. `evaluators` run after steps on the
    current model (bolt_jax.eval.periodic.TrainEval, built by the workflows from config.train_eval)."""
    validate_train_config(config)  # refuses to resume under other settings (train.on_change="refuse")
    if config.get("dry_run", False):
        return dry_run(config)
    reconcile_run_dir(config)  # train.on_change="restart": moves the old run aside
    setup = TrainSetup(config)
    t = config.train
    run_dir = _prepare_run_dir(config)
    keep_period = config.get("train_eval", {}).get("every", 0) if config.get("train_eval", {}).get(
        "keep_eval_checkpoints", False) else 0
    ckpt = TrainCheckpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=t.keep_checkpoints,
                             async_save=t.async_checkpoint, keep_period=keep_period or None)
    source = batches_lib.make_train_batches(config, setup.model_cfg.vocab_size, split="train")
    try:
        state = _restore_or_init(setup, ckpt, source)
    except BaseException:
        ckpt.close()
        raise
    start = int(jax.device_get(state["step"]))
    writer = MetricsWriter(run_dir, tracker=t.get("tracker", "tensorboard"), resume=start > 0,
                           config=json.loads(config.to_json_best_effort()))
    progress = TrainProgress(config, setup, ckpt, writer, start)
    hooks = StepHooks(config, setup, ckpt, source, progress, evaluators)
    try:
        state, stopped_by = _run_steps(setup, state, source, start, t.steps, progress, hooks)
    finally:
        ckpt.close()
        writer.close()
        progress.close_bar()

    summary = _finish(config, setup, progress.losses, progress.history, start, stopped_by, run_dir)
    if t.get("export_model", True) and not stopped_by and summary["steps"] == t.steps:
        summary["model_dir"] = export_model(config, setup, state, run_dir)
    return summary


def export_model(config: ml_collections.ConfigDict, setup: TrainSetup, state, run_dir: str) -> str:
    """The trained params as a model checkpoint (bolt_jax.model.artifact), with the run's tokenizer. One exported at
    an earlier step (a run continued with a larger train.steps) is replaced."""
    from bolt_jax.model import artifact as model_ckpt
    out = os.path.join(run_dir, "model")
    exists = model_ckpt.is_complete(out)
    if exists:
        with open(os.path.join(out, model_ckpt.MARKER)) as f:
            if json.load(f).get("provenance", {}).get("step") == config.train.steps:
                return out
    tokenizer_dir = config.data.get("tokenizer_path", "") or None
    if tokenizer_dir is None and config.train.init_checkpoint:
        tokenizer_dir = model_ckpt.tokenizer_path(config.train.init_checkpoint)
    model_ckpt.save_model(out, state["params"], setup.model_cfg, tokenizer_dir=tokenizer_dir, overwrite=exists,
                          provenance={"run_dir": run_dir, "step": config.train.steps})
    return out


def validation_note(eval_every: int, start: int, end: int, total_steps: int) -> str:
    """Why a run has no validation loss (rather than a bare `nan` in its summary)."""
    if not eval_every:
        return "off (train.eval_every=0)"
    if total_steps < eval_every:
        return (f"never ran: train.steps={total_steps} < train.eval_every={eval_every} (validation runs every "
                f"eval_every steps; lower it to see one)")
    if end // eval_every == start // eval_every:
        return f"not run in this leg (steps {start + 1}..{end} hold no multiple of train.eval_every={eval_every})"
    return "no validation batches (the validation split is empty; see the warning above)"


def _finish(config: ml_collections.ConfigDict, setup: TrainSetup, losses: dict[int, float],
            history: list[dict[str, Any]], start: int, stopped_by: str, run_dir: str) -> dict[str, Any]:
    """The run's summary (returned, printed and written to summary.json), so a finished run is readable at a glance
    without parsing metrics.jsonl."""
    t = config.train
    logged = [h for h in history if "tokens_per_s" in h]
    vals = [h for h in history if "val_loss" in h]
    steps_run = len(losses)
    summary = {
        "steps": max(losses) if losses else start, "steps_this_run": steps_run, "resumed_from": start,
        "first_loss": losses[min(losses)] if losses else math.nan,
        "final_loss": losses[max(losses)] if losses else math.nan,
        "losses": losses, "stopped_by": stopped_by,
        "tokens_per_s": float(np.median([h["tokens_per_s"] for h in logged[1:] or logged])) if logged else math.nan,
        "val_loss": vals[-1]["val_loss"] if vals else math.nan,
    }
    if not vals:
        summary["val_note"] = validation_note(t.eval_every, start, summary["steps"], t.steps)
    if jax.process_index() == 0:
        rows = [("run dir", run_dir), ("mesh", parallel.mesh_summary(setup.mesh)),
                ("steps", f"{summary['steps']} / {t.steps} ({steps_run} this run, resumed from {start})"),
                ("loss first -> last", f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}"),
                ("validation loss", f"{summary['val_loss']:.4f}" if vals else summary["val_note"]),
                ("tokens/s (median)", f"{summary['tokens_per_s']:,.0f}")]
        if logged and "mfu" in logged[-1]:
            rows.append(("MFU", f"{logged[-1]['mfu']:.1%}"))
        if stopped_by:
            rows.append(("stopped by", f"{stopped_by} (checkpoint saved; rerun the same command to resume)"))
        print("\ntraining summary\n" + _summary_table(rows))
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "losses"}, f, indent=2)
    return summary
