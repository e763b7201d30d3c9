"""The jobs a config can name in `config.workflow`: the registry, and the workflows that compose the packages
below (bootstrap's EM loop, the toy demo, the report, finetune evaluation, the model summary).

Each entry is a name, the function that runs it on the validated config, a validator for the settings only it
reads, and one line of description (`python -m bolt_jax.main --list_workflows`). Implementations are imported when
a workflow runs, so the command line starts fast and a workflow's heavy dependencies load only when needed.
Dependencies point one way: main -> workflows -> (train, estep, sampling, eval, synth, data) -> (model, kernels,
parallel) -> runtime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ml_collections

ConfigFn = Callable[[ml_collections.ConfigDict], Any]


@dataclass(frozen=True)
class Workflow:
    name: str
    run: ConfigFn
    description: str
    validate: Callable[[ml_collections.ConfigDict], None] | None = None  # the settings only this workflow reads


WORKFLOWS: dict[str, Workflow] = {}


def register(name: str, validate: Callable[[ml_collections.ConfigDict], None] | None = None):
    """Decorator: registers `fn` under `name`; its docstring's first line is the description."""
    def decorate(fn: ConfigFn) -> ConfigFn:
        WORKFLOWS[name] = Workflow(name, fn, (fn.__doc__ or "").strip().splitlines()[0], validate)
        return fn
    return decorate


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None, *, check_files: bool = False) -> None:
    """The workflow name, the sections every workflow uses, then the workflow's own settings (ValueError); with
    `check_files` (the command line, `--dry_run` included) also that every file and directory the workflow reads
    exists (`bolt_jax.workflows.inputs.check_inputs`: FileNotFoundError naming the key)."""
    from bolt_jax.config import validate_common
    if config.workflow not in WORKFLOWS:
        raise ValueError(f"config.workflow={config.workflow!r} is not a workflow; available: {sorted(WORKFLOWS)}")
    validate_common(config, num_devices)
    _validate_schedulers(config)
    own = WORKFLOWS[config.workflow].validate
    if own is not None:
        own(config)
    if check_files:
        from bolt_jax.workflows.inputs import check_inputs
        check_inputs(config)


def _validate_schedulers(config: ml_collections.ConfigDict) -> None:
    """The sampler settings of every section that samples (E-step, eval, generate)."""
    from bolt_jax.sampling.schedulers import SCHEDULERS
    for section in ("estep", "eval", "generate"):
        if section not in config or "scheduler" not in config[section]:
            continue
        sec = config[section]
        if sec.scheduler not in SCHEDULERS:
            raise ValueError(f"config.{section}.scheduler={sec.scheduler!r}; choose one of {SCHEDULERS}")
        if sec.get("decode_slots", 0) < 0:
            raise ValueError(f"config.{section}.decode_slots={sec.decode_slots} must be >= 0 (0 = automatic)")
        if sec.get("prefix_sharing", False) and sec.scheduler != "continuous":
            raise ValueError(f"config.{section}.prefix_sharing=True needs config.{section}.scheduler=\"continuous\"")
        if sec.get("prompt_entries", 0) < 0 or (sec.get("prompt_entries", 0) and not sec.get("prefix_sharing")):
            raise ValueError(f"config.{section}.prompt_entries={sec.prompt_entries} must be >= 0 (0 = automatic) and "
                             f"needs config.{section}.prefix_sharing=True")
    if "estep" in config and "overlap" in config.estep:
        from bolt_jax.estep.run import overlap_enabled
        overlap_enabled(config.estep)  # the mode's name, and "on" with several processes
    if "estep" in config and "num_samples" in config.estep:
        from bolt_jax.estep.run import validate_estep_config
        validate_estep_config(config.estep)


def run(config: ml_collections.ConfigDict) -> Any:
    if config.workflow not in WORKFLOWS:
        raise ValueError(f"unknown workflow {config.workflow!r}; available: {sorted(WORKFLOWS)}")
    return WORKFLOWS[config.workflow].run(config)


def _validate_train(config: ml_collections.ConfigDict) -> None:
    """The trainer's settings, the optimizer's numbers and the data section's enumerations (every workflow that
    trains: train, the demos, compare, bootstrap, finetune_eval)."""
    from bolt_jax.data.pipeline import validate_data_config
    from bolt_jax.train.loop import validate_train_config
    from bolt_jax.train.optim import validate_optim_config
    validate_train_config(config)
    validate_optim_config(config)
    validate_data_config(config)
    if "train_eval" in config:
        from bolt_jax.eval.periodic import validate_train_eval_config
        validate_train_eval_config(config)
    if "bootstrap" in config:
        from bolt_jax.workflows.bootstrap import validate_bootstrap_config
        validate_bootstrap_config(config)


def _validate_finetune(config: ml_collections.ConfigDict) -> None:
    """_validate_train, and the finetune settings the trainer is derived from (its learning rate above all)."""
    from bolt_jax.train.optim import check_number
    from bolt_jax.workflows.finetune import default_finetune_config
    _validate_train(config)
    f, d = config.finetune, default_finetune_config()
    if f.benchmark not in ("gsm8k", "math"):
        raise ValueError(f"config.finetune.benchmark={f.benchmark!r} is not one of ['gsm8k', 'math']; "
                         "set --config.finetune.benchmark=gsm8k")
    check_number("finetune.lr", f.lr, low=0.0, low_open=True, fix=f"{d.lr:g}")
    for key in ("epochs", "batch_size", "max_len", "max_new_tokens"):
        check_number(f"finetune.{key}", f[key], low=1, fix=str(d[key]))
    check_number("finetune.num_samples", f.num_samples, low=0, fix="0")
    try:
        seeds = [int(x) for x in str(f.seeds).split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise ValueError(f"config.finetune.seeds={f.seeds!r} must be comma-separated integers; "
                         f"set e.g. --config.finetune.seeds={d.seeds}")


def _validate_synth(config: ml_collections.ConfigDict) -> None:
    from bolt_jax.synth.run import validate_synth_config
    validate_synth_config(config)


def _validate_prepare(config: ml_collections.ConfigDict) -> None:
    from bolt_jax.data.prepare import validate_prepare_config
    validate_prepare_config(config)


def _validate_eval(config: ml_collections.ConfigDict) -> None:
    """The variant names, the prompt truncation and the lengths (a bad one would fail after the model is loaded)."""
    from bolt_jax.eval.prompts import VARIANTS
    e = config.eval
    for name in (v.strip() for v in e.variants.split(",") if v.strip()):
        if name not in VARIANTS:
            raise ValueError(f"config.eval.variants: unknown {name!r}; choose from {sorted(VARIANTS)}")
    if e.get("truncation", "") not in ("", "drop_exemplars", "left_truncate"):
        raise ValueError(f"config.eval.truncation={e.truncation!r}; choose '' (the variant's), drop_exemplars or "
                         "left_truncate")
    for key in ("max_new_tokens", "max_prompt_tokens", "limit"):
        if not isinstance(e.get(key, 0), int) or e.get(key, 0) < 0:
            raise ValueError(f"config.eval.{key}={e[key]!r} must be an integer >= 0 (0 = the variant's / all)")


def _validate_report(config: ml_collections.ConfigDict) -> None:
    r = config.report
    if not (r.bootstrap_runs or r.synth_runs or r.finetune):
        raise ValueError("config.report names no runs: set --config.report.bootstrap_runs, synth_runs or finetune")


@register("report", _validate_report)
def paper_report(config: ml_collections.ConfigDict):  # not `report`: that name is the bolt_jax.workflows.report module
    """The paper's figures (curves against tokens, finetuned accuracy, data types) from finished run directories."""
    from bolt_jax.workflows.paper_report import run_report
    return run_report(config)


@register("model_summary")
def model_summary(config: ml_collections.ConfigDict) -> dict:
    """Build the model on the mesh, print parameters with their shardings, and time a forward pass."""
    from bolt_jax.workflows.summary import model_summary as run_summary
    return run_summary(config)


@register("train", _validate_train)
def train(config: ml_collections.ConfigDict):
    """M-step: train (or resume) on the configured data; checkpoints, metrics, validation."""
    from bolt_jax.eval.periodic import evaluators_for
    from bolt_jax.train.loop import dry_run
    from bolt_jax.train.loop import train as run_train
    if config.get("dry_run", False):  # compiles only: no evaluator (they load tokenizers and benchmarks)
        return dry_run(config)
    return run_train(config, evaluators_for(config))


@register("demo", _validate_train)
def demo(config: ml_collections.ConfigDict):
    """Toy-scale BoLT on CPU: toy data, base model, warmstart, EM iterations, raw baselines, report."""
    from bolt_jax.workflows.demo import run_demo
    return run_demo(config)


@register("demo_k_sweep", _validate_train)
def demo_k_sweep(config: ml_collections.ConfigDict):
    """The toy demo's EM loop for several K (config.demo.k_values) from one shared warmstart; a side-by-side report."""
    from bolt_jax.workflows.demo import run_k_sweep
    return run_k_sweep(config)


@register("compare", _validate_train)
def compare(config: ml_collections.ConfigDict):
    """Raw vs thought-augmented training for the same steps on the toy corpus, evaluated on raw text."""
    from bolt_jax.workflows.demo import run_compare
    return run_compare(config)


@register("estep")
def estep(config: ml_collections.ConfigDict):
    """E-step: sample K thoughts per chunk with config.estep.checkpoint, weigh, resample, write the dataset."""
    from bolt_jax.estep.run import run_estep
    result = run_estep(config)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=2))
    return result


@register("bootstrap", _validate_train)
def bootstrap(config: ml_collections.ConfigDict):
    """BoLT's EM loop: warmstart, E-step/M-step iterations from the base model, raw baselines, report."""
    from bolt_jax.workflows.bootstrap import run_bootstrap
    return run_bootstrap(config)


@register("smol_gsm8k", _validate_train)
def smol_gsm8k(config: ml_collections.ConfigDict):
    """BoLT on GSM8K with SmolLM2-135M: convert the packaged GGUF, write the GSM8K corpora, run the bootstrap."""
    from bolt_jax.workflows.smol import run_smol_gsm8k
    return run_smol_gsm8k(config)


@register("synth", _validate_synth)
def synth(config: ml_collections.ConfigDict):
    """Thoughts (or WRAP paraphrases) from an API model: estimate, budget cap, cache, sync or Batch API."""
    from bolt_jax.synth.run import run_synth
    return run_synth(config)


@register("eval", _validate_eval)
def evaluate(config: ml_collections.ConfigDict):
    """Few-shot GSM8K/MATH (plain and latent variants) and validation NLL of config.eval.checkpoint."""
    from bolt_jax.eval.run import run_eval
    return run_eval(config)


@register("prepare", _validate_prepare)
def prepare(config: ml_collections.ConfigDict):
    """Write the validation / warmstart / bootstrap splits of a corpus with manifests (config.prepare)."""
    from bolt_jax.data.prepare import run_prepare
    return run_prepare(config)


@register("finetune_eval", _validate_finetune)
def finetune_eval(config: ml_collections.ConfigDict):
    """Finetune-based evaluation: SFT on completions from a checkpoint, then sampled accuracy over seeds."""
    from bolt_jax.workflows.finetune import run_finetune_eval
    return run_finetune_eval(config)


@register("generate")
def generate(config: ml_collections.ConfigDict):
    """Sample from config.generate.checkpoint for prompts; prints text, log q and tokens/s."""
    from bolt_jax.sampling.cli import run_generate
    return run_generate(config)
