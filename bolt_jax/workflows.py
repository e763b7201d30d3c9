"""The jobs a config can name in `config.workflow`.

Each workflow is a function of the validated config. Imports happen inside the functions so the CLI starts fast
and a workflow's heavy dependencies load only when it runs. Later packages register theirs here.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

import ml_collections

WORKFLOWS: dict[str, Callable[[ml_collections.ConfigDict], object]] = {}
DESCRIPTIONS: dict[str, str] = {}
_log = logging.getLogger("bolt_jax")


def workflow(name: str, description: str = ""):
    def register(fn):
        WORKFLOWS[name] = fn
        DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().splitlines()[0]
        return fn
    return register


def run(config: ml_collections.ConfigDict):
    if config.workflow not in WORKFLOWS:
        raise ValueError(f"unknown workflow {config.workflow!r}; available: {sorted(WORKFLOWS)}")
    return WORKFLOWS[config.workflow](config)


def _format_table(rows: list[tuple], headers: tuple) -> str:
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])


@workflow("model_summary")
def model_summary(config: ml_collections.ConfigDict) -> dict:
    """Build the model on the mesh, print parameters with their shardings, and time a forward pass."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from bolt_jax import parallel
    from bolt_jax.config import llama_config
    from bolt_jax.model import create_model

    cfg = llama_config(config.model)
    mesh = parallel.make_mesh(dict(config.mesh))
    rules = parallel.normalize_rules(dict(config.rules))
    t0 = time.perf_counter()
    with parallel.logical_rules(rules):
        model = create_model(cfg, mesh, seed=config.seed, rules=rules)
    init_s = time.perf_counter() - t0
    state = nnx.state(model, nnx.Param)
    rows = []
    for path, var in nnx.to_flat_state(state):
        value = var[...]
        rows.append(("/".join(map(str, path)), "x".join(map(str, value.shape)), str(value.dtype),
                     str(value.sharding.spec), f"{value.size:,}"))
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(state))
    print(f"mesh: {parallel.mesh_summary(mesh)}")
    print(_format_table(rows, ("parameter", "shape", "dtype", "sharding", "count")))
    print(f"parameters: {n_params:,} (closed form {cfg.num_params():,}); created sharded in {init_s:.2f}s")

    batch = config.summary.batch_size or parallel.batch_divisor(mesh)
    seq = min(config.summary.seq_len, cfg.max_position_embeddings)
    tokens = np.random.default_rng(config.seed).integers(0, cfg.vocab_size, (batch, seq), dtype=np.int32)
    inputs = parallel.shard_batch({"tokens": tokens}, mesh)

    @nnx.jit
    def forward(m, toks):
        return jnp.mean(m(toks))

    with jax.set_mesh(mesh), parallel.logical_rules(rules):
        t0 = time.perf_counter()
        forward(model, inputs["tokens"]).block_until_ready()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = float(forward(model, inputs["tokens"]).block_until_ready())
        step_s = time.perf_counter() - t0
    print(f"forward {batch}x{seq}: first call (compile) {compile_s:.2f}s, then {step_s * 1e3:.1f} ms; "
          f"mean logit {out:.4f}")
    return {"num_params": n_params, "forward_ms": step_s * 1e3}


def _validate_train(config: ml_collections.ConfigDict) -> None:
    from bolt_jax.train.loop import validate_train_config
    validate_train_config(config)


@workflow("train")
def train(config: ml_collections.ConfigDict):
    """M-step: train (or resume) on the configured data; checkpoints, metrics, validation."""
    from bolt_jax.train.loop import train as run_train
    return run_train(config)


def _register_validators() -> None:
    from bolt_jax.config import VALIDATORS
    VALIDATORS["train"] = _validate_train
    VALIDATORS["demo"] = _validate_train
    VALIDATORS["compare"] = _validate_train
    VALIDATORS["demo_k_sweep"] = _validate_train
    VALIDATORS["bootstrap"] = _validate_train
    VALIDATORS["finetune_eval"] = _validate_train


_register_validators()


@workflow("demo")
def demo(config: ml_collections.ConfigDict):
    """Toy-scale BoLT on CPU: toy data, base model, warmstart, EM iterations, raw baselines, report."""
    from bolt_jax.demo import run_demo
    return run_demo(config)


@workflow("demo_k_sweep")
def demo_k_sweep(config: ml_collections.ConfigDict):
    """The toy demo's EM loop for several K (config.demo.k_values) from one shared warmstart; a side-by-side report."""
    from bolt_jax.demo import run_k_sweep
    return run_k_sweep(config)


@workflow("compare")
def compare(config: ml_collections.ConfigDict):
    """Raw vs thought-augmented training for the same steps on the toy corpus, evaluated on raw text."""
    from bolt_jax.demo import run_compare
    return run_compare(config)


@workflow("estep")
def estep(config: ml_collections.ConfigDict):
    """E-step: sample K thoughts per chunk with config.estep.checkpoint, weigh, resample, write the dataset."""
    from bolt_jax.estep.run import run_estep
    result = run_estep(config)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}, indent=2))
    return result


@workflow("bootstrap")
def bootstrap(config: ml_collections.ConfigDict):
    """BoLT's EM loop: warmstart, E-step/M-step iterations from the base model, raw baselines, report."""
    from bolt_jax.bootstrap import run_bootstrap
    return run_bootstrap(config)


@workflow("synth")
def synth(config: ml_collections.ConfigDict):
    """Thoughts (or WRAP paraphrases) from an API model: estimate, budget cap, cache, sync or Batch API."""
    from bolt_jax.synth.run import run_synth
    return run_synth(config)


@workflow("eval")
def evaluate(config: ml_collections.ConfigDict):
    """Few-shot GSM8K/MATH (plain and latent variants) and validation NLL of config.eval.checkpoint."""
    from bolt_jax.eval.run import run_eval
    return run_eval(config)


@workflow("prepare")
def prepare(config: ml_collections.ConfigDict):
    """Write the validation / warmstart / bootstrap splits of a corpus with manifests (config.prepare)."""
    from bolt_jax.data.prepare import run_prepare
    return run_prepare(config)


@workflow("finetune_eval")
def finetune_eval(config: ml_collections.ConfigDict):
    """Finetune-based evaluation: SFT on completions from a checkpoint, then sampled accuracy over seeds."""
    from bolt_jax.eval.finetune import run_finetune_eval
    return run_finetune_eval(config)


@workflow("generate")
def generate(config: ml_collections.ConfigDict):
    """Sample from config.generate.checkpoint for prompts; prints text, log q and tokens/s."""
    from bolt_jax.sampling.cli import run_generate
    return run_generate(config)
