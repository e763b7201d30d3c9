"""`make demo`: BoLT's whole EM loop at toy scale, on a CPU, in minutes.

A generated math corpus whose true latent thoughts are known (bolt_jax.data.toy) stands in for FineMath and
GPT-4o-mini: a tiny base model is pretrained on raw toy text (the stand-in for TinyLlama), warm-started on the toy
thoughts, then bootstrapped for two EM iterations with K=4, against raw token- and FLOP-matched baselines; the
report shows validation loss, ELBO, and how often the E-step's chosen thought is correct per iteration.
(`run_compare` keeps the simpler raw-vs-thoughts comparison.)
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import ml_collections

from bolt_jax.data import toy
from bolt_jax.data.schema import write_jsonl
from bolt_jax.runtime.atomic import atomic_write_text

TOY_WORLD_VERSION = 19  # bump when bolt_jax.data.toy changes what it generates


def prepare_toy_data(data_dir: str, *, num_train: int, num_validation: int, seed: int) -> dict:
    """Writes the augmented training corpus, the raw validation corpus and a tokenizer; reuses them if present."""
    os.makedirs(data_dir, exist_ok=True)
    paths = {"train": os.path.join(data_dir, "train_with_thoughts.jsonl"),
             "validation": os.path.join(data_dir, "validation_raw.jsonl"),
             "tokenizer": os.path.join(data_dir, "tokenizer")}
    if not os.path.exists(paths["train"]):
        train_docs = toy.generate(num_train, seed=seed)
        toy.write_corpus(paths["validation"], toy.generate(num_validation, seed=seed + 1000))
        if not os.path.exists(os.path.join(paths["tokenizer"], "tokenizer.json")):
            toy.build_tokenizer(paths["tokenizer"])
        toy.write_corpus(paths["train"], train_docs, with_thoughts=True)  # last: its presence marks completion
    return paths


def prepare_toy_bootstrap_data(data_dir: str, *, seed: int, num_pretrain: int, num_warmstart: int,
                               num_bootstrap: int, num_validation: int) -> dict[str, str]:
    """Four toy corpora (the base model's pretraining text: questions read and restated, chains of the familiar
    operations worked out, never an answer; the warmstart set with true thoughts; the fixed raw bootstrap corpus,
    4x larger; raw validation) and the toy world's word-level tokenizer. Reused only if written with the same
    settings; otherwise rewritten (the settings are recorded in the COMPLETE marker)."""
    os.makedirs(data_dir, exist_ok=True)
    paths = {name: os.path.join(data_dir, f"{name}.jsonl") for name in
             ("pretrain", "warmstart", "bootstrap", "validation")}
    paths["tokenizer"] = os.path.join(data_dir, "tokenizer")
    settings = {"toy_world": TOY_WORLD_VERSION, "seed": seed, "pretrain": num_pretrain, "warmstart": num_warmstart,
                "bootstrap": num_bootstrap, "validation": num_validation}
    done = os.path.join(data_dir, "COMPLETE")
    if os.path.exists(done):
        try:
            if json.load(open(done)) == settings:
                return paths
        except ValueError:
            pass
        print(f"toy data in {data_dir} was written with other settings: rewriting it")
        os.remove(done)
    sets = {"warmstart": toy.generate(num_warmstart, seed=seed + 1),
            "bootstrap": toy.generate(num_bootstrap, seed=seed + 2),
            "validation": toy.generate(num_validation, seed=seed + 3)}
    toy.build_tokenizer(paths["tokenizer"])
    write_jsonl(paths["pretrain"], (toy.pretraining_record(seed, i) for i in range(num_pretrain)))
    for name, docs in sets.items():
        toy.write_corpus(paths[name], docs, with_thoughts=(name == "warmstart"))
    atomic_write_text(done, json.dumps(settings))
    return paths


def run_demo(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Toy data -> the bootstrap workflow."""
    from bolt_jax.workflows.bootstrap import run_bootstrap

    demo = config.demo
    data_dir = demo.get("data_dir") or os.path.join(os.path.abspath(config.run_dir), "data")
    paths = prepare_toy_bootstrap_data(data_dir, seed=config.seed,
                                       num_pretrain=demo.num_pretrain_docs,
                                       num_warmstart=demo.num_warmstart_docs, num_bootstrap=demo.num_bootstrap_docs,
                                       num_validation=demo.num_validation_docs)
    c = copy.deepcopy(config)
    c.unlock()
    c.data.tokenizer_path = paths["tokenizer"]
    c.data.validation_path = paths["validation"]
    c.bootstrap.update(pretrain_path=paths["pretrain"], warmstart_path=paths["warmstart"],
                       bootstrap_path=paths["bootstrap"], toy=True)
    c.lock()
    return run_bootstrap(c)


def run_k_sweep(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The paper's claim that gains grow with the number of samples K: the demo's EM loop once per K in
    config.demo.k_values, all from one base and one warmstart (trained in the first K's run and reused), into
    run_dir/k_<K>; then k_sweep.json, k_sweep.md and k_sweep.png side by side."""
    run_dir = os.path.abspath(config.run_dir)
    reports: dict[int, dict[str, Any]] = {}
    first = ""
    for k in config.demo.k_values:
        c = copy.deepcopy(config)
        c.unlock()
        c.run_dir = os.path.join(run_dir, f"k_{k}")
        c.estep.num_samples = int(k)
        c.estep.elbo_samples = [n for n in (1, 2, 4, 8) if n <= k]
        c.demo.data_dir = os.path.join(run_dir, "data")
        if first:
            c.bootstrap.shared_stages_from = first
            c.bootstrap.baselines = ""  # they do not depend on K: trained once, in the first run
        c.lock()
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
    _plot_k_sweep(rows, os.path.join(run_dir, "k_sweep.png"))
    print("\n" + "\n".join(lines))
    return summary


def _plot_k_sweep(rows: dict[int, dict[str, Any]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = sorted(rows)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.errorbar(ks, [rows[k]["heldout_accuracy"] for k in ks], yerr=[rows[k]["heldout_accuracy_se"] for k in ks],
                marker="o", capsize=3, label="held-out accuracy, last EM model")
    last_chosen = [rows[k]["iterations"][-1].get("chosen_correct") for k in ks]
    last_se = [rows[k]["iterations"][-1].get("chosen_correct_se") for k in ks]
    ax.errorbar(ks, last_chosen, yerr=last_se, marker="s", capsize=3, label="chosen thought correct, last E-step")
    ax.set(xlabel="K (posterior samples per chunk)", ylabel="share correct", ylim=(0, 1),
           title="BoLT toy demo: more samples, better thoughts?")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bolt_jax.train.metrics import read_metrics

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, res in results.items():
        rows = read_metrics(os.path.join(res["run_dir"], "metrics.jsonl"))
        train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if train:
            axes[0].plot(*zip(*train), label=name)
        if val:
            axes[1].plot(*zip(*val), marker="o", label=name)
    axes[0].set(title="training loss (own format)", xlabel="step", ylabel="nats / token")
    axes[1].set(title="validation loss on raw documents", xlabel="step", ylabel="nats / token")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_compare(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Raw vs thought-augmented training for the same steps, both evaluated on raw text; table + PNG."""
    from bolt_jax.train.loop import train

    demo = config.demo
    run_dir = os.path.abspath(config.run_dir)
    paths = prepare_toy_data(os.path.join(run_dir, "data"), num_train=demo.num_train_docs,
                             num_validation=demo.num_validation_docs, seed=config.seed)
    results: dict[str, dict[str, Any]] = {}
    for name, latent_type in (("raw", "raw"), ("thoughts", "random")):
        c = copy.deepcopy(config)
        c.unlock()
        c.workflow = "train"
        c.run_dir = os.path.join(run_dir, name)
        c.data.train_path = paths["train"]
        c.data.validation_path = paths["validation"]
        c.data.tokenizer_path = paths["tokenizer"]
        c.data.latent_type = latent_type
        c.lock()
        print(f"\n=== training on {name} data ({latent_type} format) -> {c.run_dir}")
        t0 = time.perf_counter()
        summary = train(c)
        results[name] = dict(summary, run_dir=c.run_dir, wall_s=time.perf_counter() - t0)

    plot_path = os.path.join(run_dir, "loss_curves.png")
    _plot(results, plot_path)
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
