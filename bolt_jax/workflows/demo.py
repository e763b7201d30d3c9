"""`make demo`: BoLT's whole EM loop at toy scale, on a CPU, in minutes.

A generated math corpus whose true latent thoughts are known (bolt_jax.data.toy) stands in for FineMath and
GPT-4o-mini: a tiny base model is pretrained on raw toy text (the stand-in for TinyLlama), warm-started on a
teacher's thoughts that guess what the new operations do, then bootstrapped for `bootstrap.iterations` EM
iterations (3 in configs/demo.py) with K=4, against raw token- and FLOP-matched baselines; the report shows held-out
accuracy, ELBO, and how often the E-step's sampled and chosen thoughts are correct per iteration.
(`run_compare` keeps the simpler raw-vs-thoughts comparison.)
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections

from bolt_jax.config import derive
from bolt_jax.data import toy
from bolt_jax.runtime.atomic import atomic_write_text
from bolt_jax.workflows import plots


def prepare_toy_data(data_dir: str, *, num_train: int, num_validation: int, seed: int) -> dict[str, str]:
    """The `compare` workflow's data: an augmented training corpus, a raw validation corpus, the tokenizer."""
    return toy.write_toy_data(data_dir, {"train": ("thoughts", num_train, seed),
                                         "validation": ("raw", num_validation, seed + 1000)})


def prepare_toy_bootstrap_data(data_dir: str, *, seed: int, num_pretrain: int, num_warmstart: int,
                               num_bootstrap: int, num_validation: int) -> dict[str, str]:
    """Four toy corpora (the base model's pretraining text: questions read and restated, chains of the familiar
    operations worked out and answered, never a new operation's fact; the warmstart set with the guessing
    teacher's thoughts, right about a new fact one time in seven; the fixed raw bootstrap corpus, 4x larger; raw
    validation) and the toy world's word-level tokenizer."""
    return toy.write_toy_data(data_dir, {"pretrain": ("pretraining", num_pretrain, seed),
                                         "warmstart": ("guessed_thoughts", num_warmstart, seed + 1),
                                         "bootstrap": ("raw", num_bootstrap, seed + 2),
                                         "validation": ("raw", num_validation, seed + 3)})


def run_demo(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Toy data -> the bootstrap workflow."""
    from bolt_jax.workflows.bootstrap import run_bootstrap

    demo = config.demo
    data_dir = demo.get("data_dir") or os.path.join(os.path.abspath(config.run_dir), "data")
    paths = prepare_toy_bootstrap_data(data_dir, seed=config.seed,
                                       num_pretrain=demo.num_pretrain_docs,
                                       num_warmstart=demo.num_warmstart_docs, num_bootstrap=demo.num_bootstrap_docs,
                                       num_validation=demo.num_validation_docs)
    return run_bootstrap(derive(config, {
        "data.tokenizer_path": paths["tokenizer"], "data.validation_path": paths["validation"],
        "bootstrap.pretrain_path": paths["pretrain"], "bootstrap.warmstart_path": paths["warmstart"],
        "bootstrap.bootstrap_path": paths["bootstrap"], "bootstrap.toy": True}))


def run_k_sweep(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The paper's claim that gains grow with the number of samples K: the demo's EM loop once per K in
    config.demo.k_values, all from one base and one warmstart (trained in the first K's run and reused), into
    run_dir/k_<K>; then k_sweep.json, k_sweep.md and k_sweep.png side by side."""
    run_dir = os.path.abspath(config.run_dir)
    reports: dict[int, dict[str, Any]] = {}
    first = ""
    for k in config.demo.k_values:
        changes = {"run_dir": os.path.join(run_dir, f"k_{k}"), "estep.num_samples": int(k),
                   "estep.elbo_samples": [n for n in (1, 2, 4, 8) if n <= k],
                   "demo.data_dir": os.path.join(run_dir, "data")}
        if first:  # the baselines do not depend on K: trained once, in the first run
            changes.update({"bootstrap.shared_stages_from": first, "bootstrap.baselines": ""})
        c = derive(config, changes)
        print(f"\n##### K sweep: K = {k} -> {c.run_dir}")
        reports[int(k)] = run_demo(c)["report"]
        first = first or c.run_dir
    return write_k_sweep(run_dir, reports)


def write_k_sweep(run_dir: str, reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    from bolt_jax.workflows.report import _pm
    rows = {}
    for k, r in reports.items():
        last = f"iter_{len(r['iterations'])}"
        m = r["models"].get(last, {})
        rows[k] = {"iterations": r["iterations"], "last_model": last,
                   "heldout_accuracy": m.get("heldout_accuracy"), "heldout_accuracy_se": m.get("heldout_accuracy_se"),
                   "neg_elbo_per_token": m.get("neg_elbo_per_token"),
                   "neg_elbo_per_token_se": m.get("neg_elbo_per_token_se"), "seconds": r["total_seconds"]}
    first = reports[min(reports)]["models"]
    summary = {"k": rows, "warmstart": first.get("warmstart"),
               "raw_baselines": {n: first[n] for n in ("raw_token_match", "raw_flops_match") if n in first}}
    atomic_write_text(os.path.join(run_dir, "k_sweep.json"), json.dumps(summary, indent=2, default=str))
    w = first.get("warmstart", {})
    lines = ["# BoLT toy demo: the effect of the number of samples K", "",
             "Every K starts from the same base and warmstart models and runs the same EM iterations; only the "
             "number of posterior samples per chunk differs (K = 1: no choice, the single sample is kept). "
             "Chosen correct: share of the E-step's chosen thoughts that are the true chain of steps (± bootstrap "
             "SE); held-out accuracy of the last EM model; -ELBO/token of the last EM model on the validation "
             "text, the same bound (bootstrap.elbo_samples posterior samples) for every K, lower is better.", "",
             f"Warmstart held-out accuracy: {_pm(w.get('heldout_accuracy'), w.get('heldout_accuracy_se'))}.", "",
             "| K | chosen correct per iteration | sample correct per iteration | held-out accuracy (last) | "
             "-ELBO / token (last) | minutes |", "|---|---|---|---|---|---|"]
    for k, row in rows.items():
        its = row["iterations"]
        chosen = ", ".join(_pm(i.get("chosen_correct"), i.get("chosen_correct_se"), 2) for i in its)
        sample = ", ".join(_pm(i.get("sample_correct"), i.get("sample_correct_se"), 2) for i in its)
        lines.append(f"| {k} | {chosen} | {sample} | {_pm(row['heldout_accuracy'], row['heldout_accuracy_se'])} | "
                     f"{_pm(row['neg_elbo_per_token'], row['neg_elbo_per_token_se'], 4)} | {row['seconds'] / 60:.1f} |")
    lines += ["", "![K sweep](k_sweep.png)", ""]
    atomic_write_text(os.path.join(run_dir, "k_sweep.md"), "\n".join(lines))
    plots.k_sweep_figure(rows, os.path.join(run_dir, "k_sweep.png"))
    print("\n" + "\n".join(lines))
    return summary


def run_compare(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Raw vs thought-augmented training for the same steps, both evaluated on raw text; table + PNG."""
    from bolt_jax.eval.periodic import evaluators_for
    from bolt_jax.train.loop import train

    demo = config.demo
    run_dir = os.path.abspath(config.run_dir)
    paths = prepare_toy_data(os.path.join(run_dir, "data"), num_train=demo.num_train_docs,
                             num_validation=demo.num_validation_docs, seed=config.seed)
    results: dict[str, dict[str, Any]] = {}
    for name, latent_type in (("raw", "raw"), ("thoughts", "random")):
        c = derive(config, {"workflow": "train", "run_dir": os.path.join(run_dir, name),
                            "data.train_path": paths["train"], "data.validation_path": paths["validation"],
                            "data.tokenizer_path": paths["tokenizer"], "data.latent_type": latent_type})
        print(f"\n=== training on {name} data ({latent_type} format) -> {c.run_dir}")
        t0 = time.perf_counter()
        summary = train(c, evaluators_for(c))
        results[name] = dict(summary, run_dir=c.run_dir, wall_s=time.perf_counter() - t0)

    plot_path = os.path.join(run_dir, "loss_curves.png")
    plots.loss_curves_figure(results, plot_path)
    header = f"{'run':10s} {'steps':>6s} {'train loss':>11s} {'val loss (raw)':>15s} {'tokens/s':>10s} {'time':>8s}"
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        lines.append(f"{name:10s} {r['steps']:6d} {r['final_loss']:11.4f} {r['val_loss']:15.4f} "
                     f"{r['tokens_per_s']:10,.0f} {r['wall_s']:7.1f}s")
    table = "\n".join(lines)
    print("\nBoLT toy demo: same steps, raw vs thought-augmented training, both evaluated on raw text\n" + table)
    print(f"\nloss curves: {plot_path}")
    with open(os.path.join(run_dir, "demo_summary.json"), "w") as f:
        json.dump({k: {kk: vv for kk, vv in v.items() if kk != "losses"} for k, v in results.items()}, f, indent=2)
    return results
