"""The workflows' figures, drawn one way: matplotlib without a display (Agg), one PNG per figure, closed after
saving. `bootstrap_figure` is the EM report's (`bootstrap.png`), `k_sweep_figure` the demo's K sweep,
`loss_curves_figure` the `compare` workflow's."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def figure(path: str, ncols: int = 1, figsize: tuple[float, float] = (6.5, 4.2)) -> Iterator[Any]:
    """Yields the axes of a new figure (one Axes, or an array of `ncols`) and saves it to `path` at the end."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def bootstrap_figure(report: dict, path: str) -> None:
    """Two panels: (a) what EM improves against iteration, raw baselines as horizontal bands; (b) nats per token
    per model (-ELBO for thought models, NLL for raw ones), lower is better."""
    with figure(path, ncols=2, figsize=(13, 5.4)) as axes:
        _em_panel(axes[0], report)
        _nats_panel(axes[1], report)


def _em_panel(ax, report: dict) -> None:
    """Held-out accuracy per model and the E-step's thought correctness per iteration; baselines as bands."""
    models, its = report["models"], report["iterations"]
    n_it = len(its)
    xs = list(range(0, n_it + 1))
    acc = [models.get("warmstart" if x == 0 else f"iter_{x}", {}).get("heldout_accuracy") for x in xs]
    acc_se = [models.get("warmstart" if x == 0 else f"iter_{x}", {}).get("heldout_accuracy_se") or 0 for x in xs]
    if any(a is not None for a in acc):
        ax.errorbar([x for x, a in zip(xs, acc) if a is not None], [a for a in acc if a is not None],
                    yerr=[s for s, a in zip(acc_se, acc) if a is not None], marker="o", capsize=3, color="C0",
                    label="held-out accuracy of the model (0 = warmstart)")
    rows = [r for r in its if r.get("chosen_correct") is not None]
    if rows:
        ax.errorbar([r["iteration"] for r in rows], [r["chosen_correct"] for r in rows],
                    yerr=[r["chosen_correct_se"] for r in rows], marker="s", capsize=3, color="C2",
                    label="E-step: chosen thought correct")
        ax.errorbar([r["iteration"] for r in rows], [r["sample_correct"] for r in rows],
                    yerr=[r["sample_correct_se"] for r in rows], marker="^", capsize=3, color="C2", ls="--",
                    alpha=0.7, label="E-step: mean sample correct")
    for i, name in enumerate(("base", "raw_token_match", "raw_flops_match")):
        m = models.get(name, {})
        if m.get("heldout_accuracy") is not None:
            a, se = m["heldout_accuracy"], m["heldout_accuracy_se"] or 0
            ax.axhspan(a - se, a + se, color=f"C{3 + i}", alpha=0.25)
            ax.axhline(a, color=f"C{3 + i}", lw=1, label=f"{name} accuracy (band: ±1 SE)")
    ax.set(title="what EM improves", xlabel="EM iteration", ylabel="share correct", ylim=(0, 1.04))
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: never over the data


def _nats_panel(ax, report: dict) -> None:
    """Validation nats/token per model; a bar far above the rest is cut at the top and labelled."""
    models = report["models"]
    names, vals, errs, colors = [], [], [], []
    for name, m in models.items():
        v, se, c = (m["neg_elbo_per_token"], m["neg_elbo_per_token_se"], "C0") if m.get("neg_elbo_per_token") \
            is not None else (m.get("nll_per_token"), m.get("nll_per_token_se"), "C7")
        if v is not None:
            names.append(name), vals.append(v), errs.append(se or 0), colors.append(c)
    if names:
        # a bar far above the rest (the base model has never seen an answer) is cut at the top and labelled, so
        # the models that matter keep a readable scale
        others = sorted(vals)[:-1] or vals
        cap = 1.6 * max(others) if max(vals) > 2.5 * max(others) else None
        shown = [min(v, cap) if cap else v for v in vals]
        ax.bar(names, shown, yerr=[0 if cap and v > cap else e for v, e in zip(vals, errs)], capsize=3,
               color=colors)
        for x, (v, s) in enumerate(zip(vals, shown)):
            ax.text(x, s, f"{v:.3f}" + (" (cut)" if s < v else ""), ha="center", va="bottom", fontsize=8)
        lo, hi = min(s - e for s, e in zip(shown, errs)), max(shown)
        pad = max(0.05 * (hi - lo), 0.01)
        ax.set_ylim(max(0.0, lo - 4 * pad), hi + 3 * pad)
        ax.tick_params(axis="x", rotation=30)
    k = report.get("elbo_samples") or "K"
    ax.set(title=f"validation nats/token (blue: -ELBO_{k}, grey: NLL; lower is better)", ylabel="nats / token")
    ax.grid(alpha=0.3, axis="y")


def k_sweep_figure(rows: dict[int, dict[str, Any]], path: str) -> None:
    """Held-out accuracy and chosen-thought correctness of the last EM iteration against K."""
    with figure(path) as ax:
        ks = sorted(rows)
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


def loss_curves_figure(results: dict[str, dict[str, Any]], path: str) -> None:
    """Training loss (each run in its own format) and validation loss on raw documents, per run."""
    from bolt_jax.train.metrics import read_metrics
    with figure(path, ncols=2, figsize=(11, 4)) as axes:
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


def _curve_line(ax, name: str, c: dict[str, Any], **style) -> None:
    """One curve against tokens with its SE band (trials > 1)."""
    import numpy as np
    x, y = np.asarray(c["tokens"], float), np.asarray(c["mean"], float)
    ax.plot(x, y, marker="o", markersize=3, label=f"{name} ({c['trials']} trial{'s' * (c['trials'] > 1)})", **style)
    if all(s is not None for s in c["se"]):
        se = np.asarray(c["se"], float)
        ax.fill_between(x, y - se, y + se, alpha=0.2, **{k: v for k, v in style.items() if k == "color"})


def paper_bootstrap_figure(curves: dict[str, dict[str, Any]], fewshot_key: str, path: str) -> None:
    """-ELBO_4 per token and few-shot accuracy against training tokens (log x), one line per EM iteration and raw
    baseline, the warmstart's last value as a dashed horizontal line."""
    panels = [("neg_elbo_4", "-ELBO_4 / token (nats, lower is better)", -1.0),
              ("fewshot", f"{fewshot_key.removeprefix('eval/fewshot/')} (higher is better)", 1.0),
              ("val_nll", "validation NLL / token (raw models' comparison)", 1.0)]
    names = sorted({m for panel in curves.values() for m in panel if m != "warmstart"},
                   key=lambda m: (not m.startswith("iter_"), m))
    colors = {m: f"C{i}" for i, m in enumerate(names)}  # one color per model in every panel
    with figure(path, ncols=3, figsize=(17, 4.8)) as axes:
        for ax, (panel, title, sign) in zip(axes, panels):
            for model, c in curves.get(panel, {}).items():
                c = dict(c, mean=[sign * m for m in c["mean"]])
                if model == "warmstart":
                    ax.axhline(c["mean"][-1], color="grey", linestyle="--", label="warmstart (final)")
                else:
                    _curve_line(ax, model, c, color=colors[model])
            ax.set(xscale="log", xlabel="training tokens", title=title)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "no evaluation rows in these runs", ha="center", transform=ax.transAxes)


def synth_curves_figure(curves: dict[str, dict[str, Any] | None], fewshot_key: str, path: str) -> None:
    """Few-shot accuracy against training tokens (log x), one line per synthetic-data run."""
    with figure(path) as ax:
        for name, c in curves.items():
            if c:
                _curve_line(ax, name, c)
        ax.set(xscale="log", xlabel="training tokens", ylabel="accuracy",
               title=f"data types: {fewshot_key.removeprefix('eval/fewshot/')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def finetune_figure(points: dict[str, dict[str, Any]], path: str) -> None:
    """Finetuned accuracy against EM iteration (iter_N models), other models (raw baselines, warmstart) as bands."""
    iters = sorted((int(m.split("_")[1]), p) for m, p in points.items() if m.startswith("iter_"))
    with figure(path) as ax:
        if iters:
            ax.errorbar([i for i, _ in iters], [p["accuracy"] for _, p in iters],
                        yerr=[p["se"] or 0.0 for _, p in iters], marker="o", capsize=3, label="BoLT iteration")
            ax.set_xticks([i for i, _ in iters])
        for k, (model, p) in enumerate((m, p) for m, p in points.items() if not m.startswith("iter_")):
            color = f"C{k + 1}"
            ax.axhline(p["accuracy"], color=color, linestyle="--", label=model)
            if p["se"]:
                ax.axhspan(p["accuracy"] - p["se"], p["accuracy"] + p["se"], color=color, alpha=0.15)
        ax.set(xlabel="EM iteration", ylabel="finetuned accuracy", title="finetuned accuracy (mean ± SE over runs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
