"""The `bootstrap` workflow: BoLT's EM loop on a fixed corpus, with its baselines and a report (spec 4.6, 5, 6.3).

    base ─► warmstart (train on teacher/toy thoughts)
              └► E-step 1 (warmstart model writes thoughts for the fixed corpus) ─► M-step 1 (train from base)
                   └► E-step 2 (M-step 1's model) ─► M-step 2 (from base) ─► ...
    baselines: raw token-match and raw FLOP-match (train from base on the raw fixed corpus)
    report: validation loss and ELBO per model, thought correctness per iteration (toy corpus), plots, report.md

Every M-step starts from the *base* checkpoint with a fresh optimizer, as the original ("scratch" runs). Each stage
records itself in `run_dir/manifest.json` when done; a crashed run, rerun with the same command, skips finished
stages and resumes the unfinished one where it stopped (trainer checkpoints, E-step result shards).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from typing import Any, Callable

import ml_collections
import numpy as np

from bolt_jax.data.schema import atomic_write_text

log = logging.getLogger("bolt_jax.bootstrap")


def default_bootstrap_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "iterations": 2,
        "base_checkpoint": "",  # the model every M-step starts from (converted TinyLlama); "" = pretrain one
        "pretrain_path": "",  # raw corpus for the base model when base_checkpoint is "" (toy demo)
        "pretrain_steps": 0,
        "warmstart_path": "",  # augmented records with teacher (API or toy) thoughts
        "bootstrap_path": "",  # the fixed raw corpus the E-step writes thoughts for
        "warmstart_steps": 100,
        "iteration_steps": 100,  # M-step steps per iteration
        "warmstart_global_batch_size": 0,  # 0 = config.train.global_batch_size (the paper: 96 vs 192)
        "raw_token_match_steps": 0,  # 0 = as many passes over the raw corpus as the M-step makes over its data
        "raw_flops_match_steps": 0,  # 0 = iteration_steps (same compute)
        "baselines": "raw_token_match,raw_flops_match",
        "elbo_samples": 4,  # validation ELBO_1..K per model (0 = skip)
        "elbo_docs": 16,
        "toy": False,  # the corpus is bolt_jax.data.toy: also report how often the chosen thought is correct
        "toy_eval_problems": 40,  # toy: greedy few-shot accuracy of every model on this many held-out problems
    })


# ------------------------------------------------------------------------------------------------ manifest
class Manifest:
    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "manifest.json")
        self.stages: dict[str, Any] = json.load(open(self.path)) if os.path.exists(self.path) else {}

    def done(self, name: str) -> bool:
        return self.stages.get(name, {}).get("status") == "done"

    def record(self, name: str, outputs: dict[str, Any], seconds: float) -> None:
        self.stages[name] = {"status": "done", "outputs": outputs, "seconds": seconds, "finished": time.time()}
        atomic_write_text(self.path, json.dumps(self.stages, indent=2, default=str))

    def outputs(self, name: str) -> dict[str, Any]:
        return self.stages[name]["outputs"]


def run_stage(manifest: Manifest, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if manifest.done(name):
        log.info("stage %s: done before, skipped", name)
        return manifest.outputs(name)
    print(f"\n=== bootstrap stage: {name}")
    t0 = time.perf_counter()
    out = fn()
    manifest.record(name, out, time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------------------ stages
def _train_config(config, name: str, *, data_path: str, latent_type: str, steps: int, init: str):
    c = copy.deepcopy(config)
    c.unlock()
    c.workflow = "train"
    c.run_dir = os.path.join(config.run_dir, "runs", name)
    c.train.steps = int(steps)
    c.train.init_checkpoint = init
    c.train.save_every = max(1, min(c.train.save_every, int(steps)))
    c.data.train_path = data_path
    c.data.latent_type = latent_type
    if name == "warmstart" and config.bootstrap.get("warmstart_global_batch_size", 0):
        c.train.global_batch_size = config.bootstrap.warmstart_global_batch_size
    c.lock()
    return c


def train_stage(config, name: str, **kw) -> dict[str, Any]:
    from bolt_jax.train.loop import train
    c = _train_config(config, name, **kw)
    summary = train(c)
    return {"model_dir": summary["model_dir"], "run_dir": c.run_dir, "final_loss": summary["final_loss"],
            "val_loss": summary["val_loss"], "tokens": kw["steps"] * c.train.global_batch_size * c.data.seq_len,
            "steps": kw["steps"], "tokens_per_s": summary["tokens_per_s"]}


def estep_stage(config, iteration: int, model_dir: str) -> dict[str, Any]:
    from bolt_jax.estep.run import run_estep
    c = copy.deepcopy(config)
    c.unlock()
    c.estep.checkpoint = model_dir
    c.estep.corpus_path = config.bootstrap.bootstrap_path
    c.estep.iteration = iteration
    c.estep.run_name = "bootstrap"
    c.estep.store_dir = os.path.join(config.run_dir, "estep_store")
    c.estep.output_path = os.path.join(config.run_dir, "data", f"iter_{iteration}.jsonl")
    c.lock()
    result = run_estep(c)
    if "output_path" not in result:
        raise RuntimeError(f"E-step {iteration} did not finish every slice (estep.slice={c.estep.slice}); run the "
                           f"other slices, then rerun this command to merge")
    out = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    if config.bootstrap.toy:
        out["thought_correct"] = toy_thought_accuracy(result["store"], config.bootstrap.bootstrap_path)
    return out


def toy_thought_accuracy(store_dir: str, corpus_path: str) -> dict[str, float]:
    """Share of chunks whose chosen thought computes the chunk's answer (toy corpus: thoughts are checkable),
    and the same for a uniformly chosen sample, to show what importance resampling adds."""
    import glob

    from bolt_jax.data import toy
    chosen = uniform = total = 0
    for path in glob.glob(os.path.join(store_dir, "shards", "*", "*.jsonl")):
        for line in open(path):
            row = json.loads(line)
            answer = toy.extract_answer(row["suffix"])
            if answer is None:
                continue
            total += 1
            ok = [toy.solve_steps(z) == answer for z in row["latents"]]
            chosen += ok[row["chosen"]]
            uniform += sum(ok) / len(ok)
    return {"chosen": chosen / total if total else math.nan, "any_sample": uniform / total if total else math.nan,
            "chunks": total}


def elbo_stage(config, name: str, model_dir: str) -> dict[str, float]:
    """Validation ELBO_n per token of one model (bolt_jax.eval.validation.validation_elbo)."""
    from bolt_jax.eval.validation import validation_elbo
    return validation_elbo(config, model_dir, config.data.validation_path, k=config.bootstrap.elbo_samples,
                           docs=config.bootstrap.elbo_docs, name=f"elbo_{name}",
                           store_dir=os.path.join(config.run_dir, "elbo_store"))


def toy_fewshot_stage(config, model_dir: str, variant: str) -> dict[str, float]:
    """Greedy few-shot accuracy on held-out toy problems (latent variant for models trained with thoughts), graded
    by the GSM8K code path; exemplars are the first warmstart problems with their thoughts."""
    from bolt_jax import checkpoint as model_ckpt
    from bolt_jax import parallel
    from bolt_jax.data import toy
    from bolt_jax.data.readers import open_corpus
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.eval.fewshot import Example, evaluate_fewshot, sampler_generate_fn

    def problems(records, with_thoughts: bool):
        for r in records:
            chunks = r.get("chunks") or [{"suffix": t, "latent": None} for t in r["text"].split("\n\n")]
            for c in chunks:
                text = c["suffix"].strip()
                if " The answer is" in text:
                    yield text[: text.rindex(" The answer is")], str(toy.extract_answer(text)), c.get("latent")

    val = open_corpus(config.data.validation_path)
    examples = [Example(str(i), q, a) for i, (q, a, _) in
                enumerate(problems((val[j] for j in range(len(val))), False))][: config.bootstrap.toy_eval_problems]
    warm = open_corpus(config.bootstrap.warmstart_path)
    shots = [{"question": q, "reasoning": z, "answer": a}
             for q, a, z in problems((warm[j] for j in range(min(3, len(warm)))), True)][:3]
    mesh = parallel.make_mesh(dict(config.mesh))
    model, _, tok_dir = model_ckpt.load_model(model_dir, mesh, compute_dtype=config.model.compute_dtype)
    tok = load_tokenizer(tok_dir or config.data.tokenizer_path)
    out = evaluate_fewshot(examples, variant, sampler_generate_fn(model, tok, mesh), tokenizer=tok, exemplars=shots,
                           max_new_tokens=48, max_prompt_tokens=config.data.seq_len,
                           output_path=os.path.join(config.run_dir, "eval", f"toy_{os.path.basename(
                               os.path.dirname(model_dir))}.json"))
    m = out["metrics"]
    return {"variant": variant, "accuracy": m["accuracy"], "accuracy_se": m["accuracy_se"],
            "examples": m["examples"]}


def count_tokens(path: str, tokenizer_path: str, latent_type: str, limit: int = 2000) -> float:
    """Mean tokens per document of a corpus in a format (a sample of up to `limit` documents)."""
    from bolt_jax.data.formats import format_document
    from bolt_jax.data.readers import open_corpus
    from bolt_jax.data.tokenizer import cached_tokenizer
    tok = cached_tokenizer(tokenizer_path)
    corpus = open_corpus(path)
    n = min(limit, len(corpus))
    rng = np.random.default_rng(0)
    total = sum(len(tok.encode_document(format_document(corpus[i], latent_type, rng))[0]) for i in range(n))
    return total / max(n, 1)


# ------------------------------------------------------------------------------------------------ driver
def run_bootstrap(config: ml_collections.ConfigDict) -> dict[str, Any]:
    b = config.bootstrap
    run_dir = os.path.abspath(config.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    manifest = Manifest(run_dir)
    models: dict[str, dict[str, Any]] = {}

    base = b.base_checkpoint
    if not base:
        if not b.pretrain_path or b.pretrain_steps <= 0:
            raise ValueError("config.bootstrap.base_checkpoint is empty: give a converted model "
                             "(python -m convert hf-to-orbax) or pretrain_path + pretrain_steps for a toy base")
        models["base"] = run_stage(manifest, "base", lambda: train_stage(
            config, "base", data_path=b.pretrain_path, latent_type="raw", steps=b.pretrain_steps, init=""))
        base = models["base"]["model_dir"]

    models["warmstart"] = run_stage(manifest, "warmstart", lambda: train_stage(
        config, "warmstart", data_path=b.warmstart_path, latent_type="random", steps=b.warmstart_steps, init=base))
    esteps: dict[int, dict[str, Any]] = {}
    previous = models["warmstart"]["model_dir"]
    for i in range(1, b.iterations + 1):
        prev = previous
        esteps[i] = run_stage(manifest, f"estep_{i}", lambda: estep_stage(config, i, prev))
        data = esteps[i]["output_path"]
        models[f"iter_{i}"] = run_stage(manifest, f"mstep_{i}", lambda: train_stage(
            config, f"iter_{i}", data_path=data, latent_type="random", steps=b.iteration_steps, init=base))
        previous = models[f"iter_{i}"]["model_dir"]

    baselines = [x.strip() for x in b.baselines.split(",") if x.strip()]
    if "raw_token_match" in baselines:
        steps = b.raw_token_match_steps
        if not steps:
            aug = count_tokens(esteps[b.iterations]["output_path"], config.data.tokenizer_path, "random") \
                if b.iterations else count_tokens(b.warmstart_path, config.data.tokenizer_path, "random")
            raw = count_tokens(b.bootstrap_path, config.data.tokenizer_path, "raw")
            steps = max(1, round(b.iteration_steps * raw / aug))
        models["raw_token_match"] = run_stage(manifest, "raw_token_match", lambda: train_stage(
            config, "raw_token_match", data_path=b.bootstrap_path, latent_type="raw", steps=steps, init=base))
    if "raw_flops_match" in baselines:
        steps = b.raw_flops_match_steps or b.iteration_steps
        models["raw_flops_match"] = run_stage(manifest, "raw_flops_match", lambda: train_stage(
            config, "raw_flops_match", data_path=b.bootstrap_path, latent_type="raw", steps=steps, init=base))

    accuracy: dict[str, dict[str, float]] = {}
    if b.toy and b.get("toy_eval_problems", 0) > 0 and config.data.validation_path:
        for name, m in models.items():
            variant = "toy" if name == "base" or name.startswith("raw") else "latent_toy"
            accuracy[name] = run_stage(manifest, f"fewshot_{name}", lambda: toy_fewshot_stage(
                config, m["model_dir"], variant))
    elbos: dict[str, dict[str, float]] = {}
    if b.elbo_samples > 0 and config.data.validation_path:
        for name, m in models.items():
            elbos[name] = run_stage(manifest, f"elbo_{name}", lambda: elbo_stage(config, name, m["model_dir"]))
    return write_report(config, run_dir, models, esteps, elbos, accuracy)


# ------------------------------------------------------------------------------------------------ report
def write_report(config, run_dir: str, models, esteps, elbos, accuracy=None) -> dict[str, Any]:
    k = config.bootstrap.elbo_samples
    accuracy = accuracy or {}
    header = f"| model | steps | train tokens | validation loss (raw) | ELBO_{k} / token | toy accuracy (few-shot) |"
    lines = ["# BoLT bootstrap report", "", f"run: `{run_dir}`", "", header, "|---|---|---|---|---|---|"]
    console = [f"{'model':16s} {'steps':>6s} {'tokens':>10s} {'val loss':>9s} {f'-ELBO_{k}/tok':>12s} "
               f"{'toy acc':>14s}"]
    for name, m in models.items():
        elbo = elbos.get(name, {}).get(f"elbo_{k}_per_token", math.nan)
        acc = accuracy.get(name)
        acc_s = f"{acc['accuracy']:.3f} +- {acc['accuracy_se']:.3f}" if acc else "-"
        lines.append(f"| {name} | {m['steps']} | {m['tokens']:,} | {m['val_loss']:.4f} | {elbo:.4f} | {acc_s} |")
        console.append(f"{name:16s} {m['steps']:6d} {m['tokens']:10,d} {m['val_loss']:9.4f} {-elbo:12.4f} "
                       f"{acc_s:>14s}")
    if esteps:
        lines += ["", "## E-steps", "", "| iteration | chunks | mean ESS | share not done | mean thought tokens |"
                  + (" chosen thought correct | mean sample correct |" if config.bootstrap.toy else ""),
                  "|---|---|---|---|---|" + ("---|---|" if config.bootstrap.toy else "")]
        for i, e in esteps.items():
            row = (f"| {i} | {e.get('chunks', 0)} | {e.get('mean_ess', math.nan):.2f} | "
                   f"{e.get('share_not_done', math.nan):.2%} | {e.get('mean_thought_tokens', math.nan):.1f} |")
            if config.bootstrap.toy and "thought_correct" in e:
                tc = e["thought_correct"]
                row += f" {tc['chosen']:.1%} | {tc['any_sample']:.1%} |"
            lines.append(row)
    plot = os.path.join(run_dir, "bootstrap.png")
    _plot(models, esteps, elbos, k, plot, toy=config.bootstrap.toy, accuracy=accuracy)
    lines += ["", f"![curves]({os.path.basename(plot)})", ""]
    atomic_write_text(os.path.join(run_dir, "report.md"), "\n".join(lines))
    print("\nBoLT bootstrap summary\n" + "\n".join(console))
    if esteps and config.bootstrap.toy:
        print("chosen thought correct per iteration: " + ", ".join(
            f"{i}: {e['thought_correct']['chosen']:.1%}" for i, e in esteps.items() if "thought_correct" in e))
    print(f"report: {os.path.join(run_dir, 'report.md')}")
    return {"models": models, "esteps": esteps, "elbos": elbos, "accuracy": accuracy,
            "report": os.path.join(run_dir, "report.md")}


def _plot(models, esteps, elbos, k, path: str, toy: bool, accuracy=None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bolt_jax.train.metrics import read_metrics
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for name, m in models.items():
        rows = read_metrics(os.path.join(m["run_dir"], "metrics.jsonl"))
        per_step = m["tokens"] / max(m["steps"], 1)
        val = [(r["step"] * per_step, r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if val:
            axes[0].plot(*zip(*val), marker=".", label=name)
    axes[0].set(title="validation loss on raw documents", xlabel="training tokens", ylabel="nats / token")
    names = [n for n in models if n in elbos]
    if names:
        axes[1].bar(names, [-elbos[n].get(f"elbo_{k}_per_token", math.nan) for n in names])
        axes[1].set(title=f"validation -ELBO_{k} per token (lower is better)")
        axes[1].tick_params(axis="x", rotation=30)
    if esteps:
        its = sorted(esteps)
        axes[2].plot(its, [esteps[i].get("mean_ess", math.nan) for i in its], marker="o", label="mean ESS")
        if toy:
            ax2 = axes[2].twinx()
            ax2.plot(its, [esteps[i].get("thought_correct", {}).get("chosen", math.nan) for i in its], "g-s",
                     label="chosen thought correct")
            ax2.set_ylabel("share correct")
            ax2.legend(loc="lower right")
        axes[2].set(title="E-step per iteration", xlabel="iteration", ylabel="effective sample size")
        axes[2].legend(loc="upper left")
    if accuracy:
        names = list(accuracy)
        axes[3].bar(names, [accuracy[n]["accuracy"] for n in names],
                    yerr=[accuracy[n]["accuracy_se"] for n in names], capsize=3)
        axes[3].set(title="few-shot accuracy (held-out problems)", ylabel="accuracy")
        axes[3].tick_params(axis="x", rotation=30)
    for ax in axes[:1]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
