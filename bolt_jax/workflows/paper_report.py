"""The `report` workflow: the paper's figures from finished run directories (several trials give SE bands).

    python -m bolt_jax.main --config configs/report.py \
        --config.report.bootstrap_runs=runs/bootstrap_fixed/trial_0,runs/bootstrap_fixed/trial_1 \
        --config.report.synth_runs=runs/synth_compare/latent_thoughts_trial_0,runs/synth_compare/raw_fresh_trial_0 \
        --config.report.finetune=iter_1=runs/ft/iter_1,iter_2=runs/ft/iter_2,raw_flops_match=runs/ft/raw_flops

Read from each training run's `metrics.jsonl`, the rows of evaluation during training (bolt_jax.eval.periodic,
keys `eval/...` with `eval/train_tokens`); from each finetune run's `finetune_eval.json`. Written to
`report.output_dir`: `paper_report.json` (every curve: tokens, mean, SE, trials), `paper_report.md`, and
- `bootstrap_curves.png`: -ELBO_4 per token and few-shot accuracy against training tokens (log x) for every EM
  iteration and both raw baselines, the warmstart's final value as a horizontal line (the paper's Figure 4 kind);
- `finetune.png`: finetuned accuracy against EM iteration, the raw baselines as horizontal bands;
- `synth_curves.png`: few-shot accuracy against tokens for each synthetic-data type (the data-type comparison).
A bootstrap run's own `report.json` is also rendered again into its `report.md` and `bootstrap.png`. Sign
convention as everywhere: -ELBO and NLL in nats per token, lower is better; accuracies in [0, 1]; SE is the standard
error of the mean over trials (n - 1 in the variance), absent with one trial.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections
import numpy as np

from bolt_jax.runtime.atomic import atomic_write_text

CURVE_MODELS = ("raw_token_match", "raw_flops_match")  # plus iter_1..iter_N, found in the runs


def default_report_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "bootstrap_runs": "",  # comma-separated run_dirs of bootstrap trials (same setup, other seeds)
        "synth_runs": "",  # comma-separated run_dirs of synthetic-data comparison runs (train workflow)
        "finetune": "",  # comma-separated model=finetune_run_dir pairs (each holds finetune_eval.json)
        "metric": "",  # the few-shot accuracy key plotted ("" = the first latent synthetic variant found)
        "output_dir": "",  # "" = <run_dir>
    })


def _split(value: str) -> list[str]:
    return [x.strip() for x in str(value).split(",") if x.strip()]


def eval_rows(metrics_path: str) -> list[dict[str, Any]]:
    """The evaluation rows of one training run (last row per step wins: a resumed run may repeat a step)."""
    if not os.path.exists(metrics_path):
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in open(metrics_path):
        row = json.loads(line)
        if "eval/train_tokens" in row:
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error over trials (None with one trial)."""
    a = np.asarray(values, float)
    return float(a.mean()), (float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None)


def curve(runs: list[str], key: str) -> dict[str, Any] | None:
    """One metric of one model over trials: at each training-token count every trial has, the mean and SE."""
    per_trial = [{r["eval/train_tokens"]: r[key] for r in eval_rows(os.path.join(run, "metrics.jsonl"))
                  if key in r and r[key] is not None} for run in runs]
    per_trial = [t for t in per_trial if t]
    if not per_trial:
        return None
    tokens = sorted(set.intersection(*(set(t) for t in per_trial)))
    points = [mean_se([t[x] for t in per_trial]) for x in tokens]
    return {"tokens": tokens, "mean": [m for m, _ in points], "se": [s for _, s in points],
            "trials": len(per_trial)}


def bootstrap_curves(run_dirs: list[str], keys: dict[str, str]) -> dict[str, dict[str, Any]]:
    """{panel: {model: curve}} over the trials' stage runs (`<run_dir>/runs/<model>`)."""
    names = sorted({n for d in run_dirs if os.path.isdir(os.path.join(d, "runs"))
                    for n in os.listdir(os.path.join(d, "runs"))})
    models = [n for n in names if n.startswith("iter_")] + [n for n in CURVE_MODELS if n in names]
    if "warmstart" in names:
        models.append("warmstart")
    out: dict[str, dict[str, Any]] = {}
    for panel, key in keys.items():
        out[panel] = {}
        for m in models:
            c = curve([os.path.join(d, "runs", m) for d in run_dirs], key)
            if c:
                out[panel][m] = c
    return out


def fewshot_key(run_dirs: list[str], wanted: str) -> str:
    """The few-shot accuracy key to plot: `report.metric`, else the first latent synthetic variant found."""
    if wanted:
        return wanted if wanted.startswith("eval/") else f"eval/fewshot/{wanted}/accuracy"
    keys: set[str] = set()
    for d in run_dirs:
        for root, _, files in os.walk(d):
            if "metrics.jsonl" in files:
                for row in eval_rows(os.path.join(root, "metrics.jsonl")):
                    keys |= {k for k in row if k.startswith("eval/fewshot/") and k.endswith("/accuracy")}
    ranked = sorted(keys, key=lambda k: ("latent_" not in k, "synthetic" not in k, "math" not in k, k))
    return ranked[0] if ranked else ""


def finetune_points(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """{model: {accuracy, se, runs}} from `model=finetune_run_dir` pairs."""
    out = {}
    for pair in pairs:
        model, _, run_dir = pair.partition("=")
        if not run_dir:
            raise ValueError(f"config.report.finetune: {pair!r} is not model=run_dir")
        path = os.path.join(run_dir, "finetune_eval.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"config.report.finetune: {path} does not exist (run the finetune_eval first)")
        r = json.load(open(path))
        se = r.get("accuracy_se")
        out[model.strip()] = {"accuracy": r["accuracy_mean"], "se": None if se is None or math.isnan(se) else se,
                              "runs": len(r.get("per_run", r.get("per_seed", {})))}
    return out


def run_report(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Every figure the given runs allow, plus paper_report.json and paper_report.md."""
    from bolt_jax.workflows import plots
    r = config.report
    out_dir = os.path.abspath(r.output_dir or config.run_dir)
    os.makedirs(out_dir, exist_ok=True)
    boot, synth = _split(r.bootstrap_runs), _split(r.synth_runs)
    for d in [*boot, *synth]:
        if not os.path.isdir(d):
            raise FileNotFoundError(f"config.report: run directory {d} does not exist")
    result: dict[str, Any] = {"bootstrap_runs": boot, "synth_runs": synth}
    if boot:
        key = fewshot_key(boot, r.metric)
        result["bootstrap"] = bootstrap_curves(boot, {"neg_elbo_4": "eval/elbo_4_per_token", "fewshot": key,
                                                      "val_nll": "eval/val_nll_per_token"})
        result["bootstrap_fewshot_key"] = key
        plots.paper_bootstrap_figure(result["bootstrap"], key, os.path.join(out_dir, "bootstrap_curves.png"))
        result["rerendered"] = [d for d in boot if rerender_bootstrap_report(d)]
    if synth:
        key = fewshot_key(synth, r.metric)
        result["synth"] = {os.path.basename(d.rstrip("/")): curve([d], key) for d in synth}
        result["synth_fewshot_key"] = key
        plots.synth_curves_figure(result["synth"], key, os.path.join(out_dir, "synth_curves.png"))
    if _split(r.finetune):
        result["finetune"] = finetune_points(_split(r.finetune))
        plots.finetune_figure(result["finetune"], os.path.join(out_dir, "finetune.png"))
    atomic_write_text(os.path.join(out_dir, "paper_report.json"), json.dumps(result, indent=2))
    atomic_write_text(os.path.join(out_dir, "paper_report.md"), render(result))
    print(f"report written to {out_dir} (paper_report.json, paper_report.md and the figures)")
    return result


def rerender_bootstrap_report(run_dir: str) -> bool:
    """A bootstrap run's report.md and bootstrap.png drawn again from its report.json (False when it has none)."""
    from bolt_jax.workflows.plots import bootstrap_figure
    from bolt_jax.workflows.report import render_markdown
    path = os.path.join(run_dir, "report.json")
    if not os.path.exists(path):
        return False
    report = json.load(open(path))
    bootstrap_figure(report, os.path.join(run_dir, "bootstrap.png"))
    atomic_write_text(os.path.join(run_dir, "report.md"), render_markdown(report, run_dir=run_dir))
    return True


def _fmt(mean: float, se: float | None) -> str:
    return f"{mean:.4f}" + (f" ± {se:.4f}" if se is not None else "")


def render(result: dict[str, Any]) -> str:
    """paper_report.md: what each figure shows, and the last point of every curve."""
    lines = ["# The paper's figures from these runs", "",
             "-ELBO and NLL in nats per token (lower is better); accuracies in [0, 1]; ± is the standard error over "
             "trials (none with one trial). Tokens are packed training tokens (step x batch x sequence length).", ""]
    for section, title in (("bootstrap", "Bootstrapping (bootstrap_curves.png)"), ("synth", "Synthetic data "
                                                                                              "(synth_curves.png)")):
        if section not in result:
            continue
        lines += [f"## {title}", "", "| panel | model | last tokens | value | trials |", "|---|---|---|---|---|"]
        panels = result[section] if section == "bootstrap" else {"fewshot": result[section]}
        for panel, models in panels.items():
            for model, c in models.items():
                if c:
                    lines.append(f"| {panel} | {model} | {c['tokens'][-1]:,} | {_fmt(c['mean'][-1], c['se'][-1])} "
                                 f"| {c['trials']} |")
        lines.append("")
    if "finetune" in result:
        lines += ["## Finetuned accuracy (finetune.png)", "", "| model | accuracy | runs |", "|---|---|---|"]
        lines += [f"| {m} | {_fmt(p['accuracy'], p['se'])} | {p['runs']} |" for m, p in result["finetune"].items()]
        lines.append("")
    return "\n".join(lines)
