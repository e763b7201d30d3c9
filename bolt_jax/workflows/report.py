"""The bootstrap workflow's report: `report.json` (the interface other tools read), `report.md` (for a reader) and
`bootstrap.png` (what EM improves, at a glance).

report.json:
    {"iterations": [{"iteration": 1, "sample_correct": .., "chosen_correct": .., "ess": .., ...}, ...],
     "models": {"warmstart": {"heldout_accuracy": .., "heldout_accuracy_se": .., "neg_elbo_per_token": ..,
                              "nll_per_token": null, ...}, ...},
     "checks": [{"name": .., "passed": .., "detail": ..}, ...],
     "stage_seconds": {...}, "commit": "...", "config": {...}}

One sign convention: -ELBO and NLL in nats per token, lower is better. A model trained with thoughts (warmstart,
iter_N) gets -ELBO_K (its bound on the NLL of the text); a raw model (base, raw baselines) gets the NLL itself, on
the same validation tokens. Every estimate carries a bootstrap standard error (over problems, chunks or documents).
"""

from __future__ import annotations

import math
import os
import subprocess
from typing import Any

DESCRIPTIONS = {
    "base": "the base model: pretrained on raw text only (the stand-in for TinyLlama)",
    "warmstart": "base trained on the small warmstart set with its teacher's thoughts",
    "raw_token_match": "base trained on the raw bootstrap corpus for as many passes as an M-step makes",
    "raw_flops_match": "base trained on the raw bootstrap corpus for as many steps (compute) as an M-step",
}


# what "correct" means for a thought, per bootstrap.answer_check (the report's wording)
CORRECT_THOUGHT = {
    "toy": "the true chain of steps",
    "gsm8k": "thoughts reaching the document's final answer (the number after the thought's last '=', else its "
             "last number, equals the gold answer: bolt_jax.data.gsm8k.thought_is_correct)",
}
HELDOUT = {
    "toy": "greedy answers to held-out toy problems",
    "gsm8k": "greedy answers to GSM8K test problems, zero-shot, graded on the first \"The answer is N\" after the "
             "thought",
}


def describe(name: str, base_given: bool = False) -> str:
    if name == "base" and base_given:
        return "the base model: the given checkpoint (bootstrap.base_checkpoint), not trained here"
    if name.startswith("iter_"):
        i = int(name.split("_")[1])
        by = "warmstart" if i == 1 else f"iter_{i - 1}"
        return f"EM iteration {i}: base trained on the bootstrap corpus with the thoughts {by} wrote (E-step {i})"
    return DESCRIPTIONS.get(name, name)


def git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _get(d: dict | None, key: str, default=None):
    return d.get(key, default) if d else default


def build_report(*, models: dict[str, dict], esteps: dict[int, dict], evaluations: dict[str, dict],
                 stage_seconds: dict[str, float], config: dict, toy: bool, answer_check: str = "") -> dict[str, Any]:
    """report.json's content; `answer_check` ("toy", "gsm8k" or "") names how thoughts were graded (toy=True is
    "toy"), and the toy's claims are checked only for the toy."""
    answer_check = answer_check or ("toy" if toy else "")
    iterations = []
    for i in sorted(esteps):
        e = esteps[i]
        row = {"iteration": i, "estep_model": "warmstart" if i == 1 else f"iter_{i - 1}",
               "chunks": e.get("chunks"), "mean_ess_all_chunks": e.get("mean_ess"),
               "mean_thought_tokens": e.get("mean_thought_tokens"), "share_not_done": e.get("share_not_done")}
        tc = e.get("thought_correct")
        if tc:
            row.update(sample_correct=tc["sample_correct"], sample_correct_se=tc["sample_correct_se"],
                       chosen_correct=tc["chosen_correct"], chosen_correct_se=tc["chosen_correct_se"],
                       ess=tc["ess"], answer_chunks=tc["answer_chunks"])
        iterations.append(row)
    out_models = {}
    for name, m in models.items():
        ev = evaluations.get(name, {})
        few, elbo, nll = ev.get("fewshot"), ev.get("elbo"), ev.get("nll")
        row = {"description": describe(name, bool(m.get("given"))), "steps": m["steps"], "train_tokens": m["tokens"],
               "heldout_accuracy": _get(few, "accuracy"), "heldout_accuracy_se": _get(few, "accuracy_se"),
               "neg_elbo_per_token": _get(elbo, "neg_elbo_per_token"),
               "neg_elbo_per_token_se": _get(elbo, "neg_elbo_per_token_se"),
               "nll_per_token": _get(nll, "nll_per_token"), "nll_per_token_se": _get(nll, "nll_per_token_se")}
        if elbo and "true_top" in elbo:
            row["posterior"] = {k: elbo[k] for k in ("sample_correct", "sample_correct_se", "chosen_correct",
                                                     "chosen_correct_se", "true_top", "true_top_se", "ess",
                                                     "ess_se", "log_q_true", "log_q_true_se", "answer_chunks")}
            row["posterior"]["thought_parts"] = elbo.get("thought_parts", {})
        out_models[name] = row
    report = {"iterations": iterations, "models": out_models, "stage_seconds": stage_seconds,
              "total_seconds": sum(stage_seconds.values()), "commit": git_commit(), "config": config,
              "elbo_samples": _get(config.get("bootstrap"), "elbo_samples"), "answer_check": answer_check}
    report["checks"] = toy_checks(report) if toy else []
    return report


def toy_checks(report: dict) -> list[dict[str, Any]]:
    """The demo's claims, each checked against this run's figures (the targets of the toy world's design)."""
    its = [r for r in report["iterations"] if r.get("chosen_correct") is not None]
    models = report["models"]
    checks = []

    def add(name, passed, detail):
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    if its:
        chosen = [r["chosen_correct"] for r in its]
        ses = [r.get("chosen_correct_se") or 0.0 for r in its]
        add("chosen-thought correctness rises at every EM iteration (by more than twice its standard error)",
            len(chosen) > 1 and all(b - a > 2 * math.hypot(sa, sb)
                                    for a, b, sa, sb in zip(chosen, chosen[1:], ses, ses[1:])),
            " -> ".join(f"{c:.3f} ± {s:.3f}" for c, s in zip(chosen, ses)))
        add("the last iteration's chosen thoughts are >= 0.20 more often correct than the first's",
            chosen[-1] - chosen[0] >= 0.20, f"{chosen[-1]:.2f} - {chosen[0]:.2f} = {chosen[-1] - chosen[0]:+.2f}")
        add("importance resampling picks correct thoughts more often than a random sample, every iteration",
            all(r["chosen_correct"] > r["sample_correct"] for r in its),
            ", ".join(f"it {r['iteration']}: {r['chosen_correct']:.2f} vs {r['sample_correct']:.2f}" for r in its))
    last = f"iter_{len(report['iterations'])}" if report["iterations"] else None
    acc = {n: m["heldout_accuracy"] for n, m in models.items() if m.get("heldout_accuracy") is not None}
    if last in acc and "warmstart" in acc:
        add("held-out accuracy of the last iteration >= warmstart + 0.15", acc[last] >= acc["warmstart"] + 0.15,
            f"{acc[last]:.3f} vs {acc['warmstart']:.3f}")
    raws = [acc[n] for n in ("raw_token_match", "raw_flops_match") if n in acc]
    if last in acc and raws:
        add("held-out accuracy of the last iteration >= the better raw baseline + 0.20",
            acc[last] >= max(raws) + 0.20, f"{acc[last]:.3f} vs {max(raws):.3f}")
    elbo = {n: m["neg_elbo_per_token"] for n, m in models.items() if m.get("neg_elbo_per_token") is not None}
    if last in elbo and "warmstart" in elbo:
        add("-ELBO per token of the last iteration < the warmstart's", elbo[last] < elbo["warmstart"],
            f"{elbo[last]:.4f} vs {elbo['warmstart']:.4f}")
    return checks


# ------------------------------------------------------------------------------------------------ markdown
def _pm(value, se, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def render_markdown(report: dict, *, run_dir: str, plot_name: str = "bootstrap.png") -> str:
    models, its = report["models"], report["iterations"]
    k = report.get("elbo_samples") or "K"
    lines = ["# BoLT bootstrap report", "",
             f"Run `{run_dir}`, commit `{report['commit']}`, {report['total_seconds'] / 60:.1f} minutes of stages.", ""]
    checks = report.get("checks") or []
    if checks:
        passed = sum(c["passed"] for c in checks)
        lines += ["## What this run shows", "",
                  f"{passed} of {len(checks)} of the demo's claims hold in this run:", ""]
        lines += [f"- {'yes' if c['passed'] else '**no**'}: {c['name']} ({c['detail']})" for c in checks]
        lines += [""]
        lines += _conclusions(report)
    check = report.get("answer_check") or ""
    lines += ["## Models", "",
              f"Held-out accuracy: {HELDOUT.get(check, 'greedy answers to held-out problems')}, the prompt in the "
              "model's own training format (thought models write a thought first). "
              f"-ELBO_{k}/token: the {k}-sample bound on the negative log-likelihood of the validation text, in nats "
              "per token, for models trained with thoughts; NLL/token: the negative log-likelihood itself, for raw "
              "models, on the same tokens. Lower is better for both; ± is one bootstrap standard error. The -ELBO "
              "is an upper bound on the model's NLL, loose by how far its posterior q(z | x) is from the model's own "
              "posterior; when it lies above a raw model's NLL, that slack can account for the gap: compare -ELBOs "
              "with -ELBOs.", "",
              f"| model | what it is | steps | train tokens | held-out accuracy | -ELBO_{k} / token | NLL / token |",
              "|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        lines.append(f"| {name} | {m['description']} | {m['steps']} | {m['train_tokens']:,} | "
                     f"{_pm(m['heldout_accuracy'], m['heldout_accuracy_se'])} | "
                     f"{_pm(m['neg_elbo_per_token'], m['neg_elbo_per_token_se'], 4)} | "
                     f"{_pm(m['nll_per_token'], m['nll_per_token_se'], 4)} |")
    if its:
        lines += ["", "## EM iterations (E-steps on the bootstrap corpus)", "",
                  "Iteration i's E-step: the previous model samples K thoughts per chunk from its posterior, and one "
                  "is resampled by importance weight. Sample correct: share of the K samples that are "
                  f"{CORRECT_THOUGHT.get(check, 'correct')}; chosen correct: the same for the resampled thought (the "
                  "one M-step i trains on); "
                  "ESS: effective sample size of the weights (K = all equal, 1 = one sample takes all). Over chunks "
                  "that state an answer.", "",
                  "| iteration | thoughts written by | sample correct | chosen correct | ESS | mean thought tokens |",
                  "|---|---|---|---|---|---|"]
        for r in its:
            lines.append(f"| {r['iteration']} | {r['estep_model']} | "
                         f"{_pm(r.get('sample_correct'), r.get('sample_correct_se'))} | "
                         f"{_pm(r.get('chosen_correct'), r.get('chosen_correct_se'))} | "
                         f"{_pm(r.get('ess'), None, 2)} | {_pm(r.get('mean_thought_tokens'), None, 1)} |")
    posterior = {n: m["posterior"] for n, m in models.items() if m.get("posterior")}
    if posterior:
        lines += ["", "## Posterior diagnostics (held-out validation chunks)", "",
                  f"Each model's own E-step on held-out text, K = {k}. True on top: share of chunks where the true "
                  f"thought, scored as a (K+1)-th candidate, gets at least the largest importance weight (chance "
                  f"is about 1/(K+1)). log q(true): the posterior's log-probability of the true thought, in nats.", "",
                  "| model | sample correct | chosen correct | true on top | ESS | log q(true) |",
                  "|---|---|---|---|---|---|"]
        for n, p in posterior.items():
            lines.append(f"| {n} | {_pm(p['sample_correct'], p['sample_correct_se'])} | "
                         f"{_pm(p['chosen_correct'], p['chosen_correct_se'])} | "
                         f"{_pm(p['true_top'], p['true_top_se'])} | "
                         f"{_pm(p['ess'], p['ess_se'], 2)} | {_pm(p['log_q_true'], p['log_q_true_se'], 2)} |")
    parts = sorted({key for p in posterior.values() for key in p.get("thought_parts", {})})
    if parts:
        lines += ["", "## Which part of the thought each model gets right", "",
                  "Mean log-probability per token (nats; 0 = certain, log(1/7) = -1.95 = a guess among the numbers) "
                  "of the true thought's parts on the same held-out chunks, as the posterior writes it (after the "
                  "answer) and as the prior writes it (before it): copying the start number and each step's "
                  "operation from the question, each fact of a familiar operation (result: the base model knew "
                  "these), each fact of a new operation (new_result: only thoughts teach these), the format words, "
                  "and, in the prior format, the answer after the thought. A thought is right only when every part "
                  "is.", "",
                  "| model | " + " | ".join(parts) + " |", "|---|" + "---|" * len(parts)]
        for n, p in posterior.items():
            tp = p.get("thought_parts", {})
            lines.append(f"| {n} | " + " | ".join(_pm(_get(tp.get(k), "logp"), _get(tp.get(k), "logp_se"), 2)
                                                 for k in parts) + " |")
    lines += ["", f"![what EM improves]({plot_name})", "", "## Time per stage", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {n} | {s:.0f} |" for n, s in report["stage_seconds"].items()]
    lines += ["", "The full resolved configuration is in `report.json` (`config`).", ""]
    return "\n".join(lines)


def _conclusions(report: dict) -> list[str]:
    models, its = report["models"], report["iterations"]
    out = []
    its = [r for r in its if r.get("chosen_correct") is not None]
    if its:
        first, last = its[0], its[-1]
        change = last["chosen_correct"] - first["chosen_correct"]
        se = math.hypot(first.get("chosen_correct_se") or 0.0, last.get("chosen_correct_se") or 0.0)
        verdict = ("rose" if change > 2 * se else "fell" if change < -2 * se
                   else "did not change by more than twice its standard error")
        picked = all(r["chosen_correct"] > r["sample_correct"] for r in its)
        out.append(f"The share of chosen thoughts that are the true chain of steps {verdict}: "
                   f"{first['chosen_correct']:.2f} in iteration 1, {last['chosen_correct']:.2f} in iteration "
                   f"{last['iteration']} ({change:+.2f} ± {se:.2f}). The importance weights chose correct thoughts "
                   + ("more often than the sampler wrote them in every iteration" if picked else
                      "no more often than the sampler wrote them in at least one iteration")
                   + " (chosen vs sample correct below).")
    last_name = f"iter_{len(report['iterations'])}"
    acc = {n: (m["heldout_accuracy"], m["heldout_accuracy_se"]) for n, m in models.items()
           if m.get("heldout_accuracy") is not None}
    if last_name in acc and "warmstart" in acc:
        raws = {n: a for n, a in acc.items() if n.startswith("raw_")}
        best_raw = max(raws, key=lambda n: raws[n][0]) if raws else None
        text = (f"On held-out problems, {last_name} answers {acc[last_name][0]:.1%} ± {acc[last_name][1]:.1%} "
                f"correctly, against {acc['warmstart'][0]:.1%} ± {acc['warmstart'][1]:.1%} for the warmstart")
        if best_raw:
            text += (f" and {raws[best_raw][0]:.1%} ± {raws[best_raw][1]:.1%} for the better raw baseline "
                     f"({best_raw}), which saw the same raw text without thoughts")
        out.append(text + ".")
    if out:
        out.append("")
    return ["\n\n".join(x for x in out if x), ""] if out else []
