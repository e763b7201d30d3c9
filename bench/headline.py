"""Every headline figure in one command, with the exact arguments; raw output and headline.json land in one folder.

    python bench/headline.py                     # on a GPU: bench/results/<date>-<device>/ (e.g. 2026-12-07-h100)
    python bench/headline.py --smoke            # every step with tiny shapes on this CPU: <date>-cpu-smoke/
    python bench/headline.py --only attention,score --results_root $OUT/results     # some steps, elsewhere
    bench/headline.sh [ARGS]                     # the same, from the repository root

Each step runs one bench script in its own process (memory peaks and compile caches do not leak between steps),
its stdout and stderr in `<step>.log` and its samples in `<step>.json` (each script's `--json`); this driver then
writes `headline.json` (schema below) and prints min / median / max of every figure beside its target. The driver
itself never starts a jax backend, so a GPU's memory is the step's alone.

headline.json: each figure as {"median", "min", "max", "samples"} (>= 5 samples): train_tokens_per_s_packed,
train_tokens_per_s_concat, train_mfu_packed, train_mfu_concat, attention_fwd_tflops_causal,
attention_packed_vs_fair_baseline, decode_tokens_per_s_b256, decode_tokens_per_s_b1024, score_tokens_per_s,
estep_sampled_tokens_per_s; decode_mosaic_vs_pallas_b256 (the Mosaic GPU decode kernel's tokens/s over the Triton
one's, run against run in one process: the Triton backend is leaving jax); and decode_kernel_max_abs_err,
decode_mosaic_kernel_max_abs_err (each GPU decode kernel against the XLA path), device, jax, commit, flop_per_token
(TinyLlama at seq 2048 by `LlamaConfig.flops_per_token`, the MFU convention), smoke, targets (met / not met), labels
(what each figure measured), steps (command, seconds, exit status). A figure whose step failed keeps its key, with
null values and the error. `--smoke` figures are meaningless (a tiny model on a CPU; cuDNN rows skipped), only the
schema is.

Time on one H100, estimated (no run has timed it yet; each run prints and records every step's seconds): the
measured work from BENCHMARKS.md (train step 0.42-0.46 s, attention calls under 3 ms, a b256 generate call 2.3 s,
the train step's compile 8.7 s in the dry run) plus guesses for process start and jax init (~5 s a process), model
init and compiles: env 10 s; train_packed and train_concat ~35 s each (init 10, compile 15, 11 steps 5); attention
~50 s (20 fwd and fwd+bwd compiles, 3 fp32 oracles, 10 x 12 samples of 10 calls); score ~25 s; estep ~120 s (the
TinyLlama checkpoint written and read back, the engine's and scorer's compiles, 6 passes over 192 chunks of K=4
thoughts at ~30k tokens/s); decode ~130 s (b256: compile 20, 6 calls of 2.3 s, the one-token compile 10; b1024:
compile 20, 6 calls of ~6.5 s, one-token calls of ~2 s); decode_kernels ~100 s (two b256 rows, each as decode's
b256 row). About 500 s (8 minutes), uncertain by a few minutes: the steps run in the
order of STEPS, each under its timeout and the `--budget_s` (540 s) left, so a run that outgrows the device tool's
10 minutes loses its last figures (the decode kernels' comparison, then decode at batch 1024), not the whole
headline.
Whether each step's programs fit the GPU's memory is checked without one, on a CPU machine: bench/gpu_preflight.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
MIN_SAMPLES = 5
FIGURES = ("train_tokens_per_s_packed", "train_tokens_per_s_concat", "train_mfu_packed", "train_mfu_concat",
           "attention_fwd_tflops_causal", "attention_packed_vs_fair_baseline", "decode_tokens_per_s_b256",
           "decode_tokens_per_s_b1024", "score_tokens_per_s", "estep_sampled_tokens_per_s")
SCALARS = ("decode_kernel_max_abs_err", "decode_mosaic_kernel_max_abs_err", "device", "jax", "commit",
           "flop_per_token")
STEP_OF = {"train_tokens_per_s_packed": "train_packed", "train_mfu_packed": "train_packed",
           "train_tokens_per_s_concat": "train_concat", "train_mfu_concat": "train_concat",
           "attention_fwd_tflops_causal": "attention", "attention_packed_vs_fair_baseline": "attention",
           "decode_tokens_per_s_b256": "decode", "decode_tokens_per_s_b1024": "decode", "score_tokens_per_s": "score",
           "estep_sampled_tokens_per_s": "estep"}


@dataclasses.dataclass(frozen=True)
class Step:
    """One bench script run with the headline's exact arguments (`smoke`: the CPU run's), and the seconds it may
    take on a GPU before it is stopped."""

    name: str
    script: str
    args: tuple[str, ...]
    smoke: tuple[str, ...]
    timeout_s: int


TRAIN = ("--remat", "none", "--layers", "unrolled", "--attention", "auto")
STEPS = (
    Step("train_packed", "train_step.py", TRAIN + ("--micro_batches", "16", "--docs", "4", "--warmup", "3",
                                                   "--runs", "8"), ("--smoke", "--docs", "4", "--runs", "5"), 110),
    Step("train_concat", "train_step.py", TRAIN + ("--micro_batches", "16", "--docs", "1", "--warmup", "3",
                                                   "--runs", "8"), ("--smoke", "--docs", "1", "--runs", "5"), 110),
    Step("attention", "attention.py", ("--headline", "--runs", "10", "--inner", "10"),
         ("--smoke", "--headline", "--runs", "5", "--inner", "1"), 150),
    Step("score", "score.py", ("--seq", "2048", "--sequences", "64", "--runs", "5"), ("--smoke", "--runs", "5"), 90),
    Step("estep", "estep.py", ("--docs", "64", "--scheduler", "continuous", "--overlap", "auto", "--repeats", "5"),
         ("--smoke", "--docs", "2", "--prompt_len", "128", "--new", "32", "--mean_len", "16", "--scheduler",
          "continuous", "--overlap", "auto", "--repeats", "5"), 200),
    Step("decode", "sampler.py", ("--batch", "256,1024", "--prompt", "512", "--prompt_min", "512,128", "--new", "512",
                                  "--runs", "5", "--prefill_runs", "3", "--check_decode_kernel"),
         ("--smoke", "--batch", "8,16", "--prompt_min", "16,4", "--runs", "5", "--prefill_runs", "3",
          "--check_decode_kernel"), 240),
    # Last: the Triton decode kernel (what `auto` runs) and its Mosaic GPU successor side by side, one process.
    Step("decode_kernels", "sampler.py", ("--batch", "256", "--prompt", "512", "--new", "512", "--runs", "5",
                                          "--prefill_runs", "3", "--decode", "pallas_gpu,mosaic_gpu",
                                          "--check_decode_kernel"),
         ("--smoke", "--batch", "8", "--runs", "5", "--prefill_runs", "3", "--decode", "pallas_gpu,mosaic_gpu",
          "--check_decode_kernel", "--model_overrides", "hidden_size=128,num_attention_heads=2,num_key_value_heads=1"),
         200),  # two b256 rows as decode's (~100 s) + the Mosaic cubin built at first run
)


@dataclasses.dataclass(frozen=True)
class Target:
    text: str
    op: str  # ">=" or "<="
    value: float


def targets(device: str) -> dict[str, Target]:
    """The issue's targets; decode's depends on the GPU (H200's bandwidth is 1.43x the H100's)."""
    decode = 120e3 if "h200" in device.lower() else 85e3
    return {
        "train_mfu_packed": Target(">= 58% MFU", ">=", 0.58),
        "train_mfu_concat": Target(">= 55% MFU", ">=", 0.55),
        "attention_fwd_tflops_causal": Target(">= 335 TFLOP/s", ">=", 335.0),
        "attention_packed_vs_fair_baseline": Target("<= 1 (not slower)", "<=", 1.0),
        "decode_tokens_per_s_b256": Target(f">= {decode / 1e3:.0f}k tokens/s", ">=", decode),
        "score_tokens_per_s": Target(">= 200k tokens/s", ">=", 200e3),
        "estep_sampled_tokens_per_s": Target(">= 60k sampled tokens/s", ">=", 60e3),
    }


# ------------------------------------------------------------------------------------------------------- running
def child_env(smoke: bool) -> dict[str, str]:
    """The steps' environment: unbuffered output; for --smoke one CPU device (a test's simulated devices dropped)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, env.get("PYTHONPATH", "")) if x)
    if smoke:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
    return env


def run_logged(cmd: list[str], log_path: str, env: dict[str, str], timeout_s: float) -> tuple[int, float]:
    """Runs `cmd` with stdout and stderr into `log_path`; on timeout kills its whole process group (a bench may
    have started children of its own). Returns (exit status, seconds); 124 on timeout, as `timeout` does."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
            log.write(f"\n[headline] stopped after {timeout_s:.0f} s\n")
    return rc, time.perf_counter() - t0


def probe_env(out_dir: str, env: dict[str, str]) -> dict[str, Any]:
    """env.log: the GPU (nvidia-smi where there is one) and the versions; returns device / jax / backend."""
    code = ("import json, jax, flax, optax; d = jax.devices(); print('jax', jax.__version__, 'flax', flax.__version__, "
            "'optax', optax.__version__, d); print(json.dumps({'device': d[0].device_kind, 'device_count': len(d), "
            "'backend': jax.default_backend(), 'jax': jax.__version__}))")
    cmd = ["bash", "-c", "command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,"
           f"driver_version,clocks.max.sm --format=csv; {sys.executable} -c \"{code}\""]
    rc, _ = run_logged(cmd, os.path.join(out_dir, "env.log"), env, 120)
    with open(os.path.join(out_dir, "env.log")) as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
    if rc or not lines:
        raise RuntimeError(f"the environment probe failed (exit {rc}); see {out_dir}/env.log")
    return json.loads(lines[-1])


def device_slug(device: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; unknown kinds as lower-case words joined by '_'."""
    kind = device.lower()
    known = next((k for k in ("gh200", "h200", "h100", "b200", "a100", "l40s") if k in kind), None)
    return known or re.sub(r"[^a-z0-9]+", "_", kind).strip("_")


def results_dir(root: str, device: str, smoke: bool) -> str:
    """<root>/<date>-<device>[-smoke]; a second run the same day gets -2, -3, ... (nothing is overwritten)."""
    base = os.path.join(root, f"{time.strftime('%Y-%m-%d')}-{device_slug(device)}{'-smoke' if smoke else ''}")
    path, n = base, 1
    while os.path.exists(os.path.join(path, "headline.json")):
        n += 1
        path = f"{base}-{n}"
    os.makedirs(path, exist_ok=True)
    return path


def step_command(step: Step, out_dir: str, smoke: bool) -> tuple[list[str], str]:
    """The step's command line (with `--json` into `out_dir`) and that JSON's path."""
    json_path = os.path.join(out_dir, f"{step.name}.json")
    args = list(step.smoke if smoke else step.args) + ["--json", json_path]
    if step.script == "estep.py":
        args += ["--out", out_dir]  # its own .md / .json report lands beside the others
    return [sys.executable, os.path.join("bench", step.script), *args], json_path


def run_step(step: Step, out_dir: str, *, smoke: bool, left_s: float, env: dict[str, str]) -> tuple[dict, dict | None]:
    """One step under its timeout (a GPU run's) and the time left; its record and its JSON. The JSON is read after a
    failure too: a script may have written the rows it finished before it was stopped."""
    cmd, json_path = step_command(step, out_dir, smoke)
    record: dict[str, Any] = {"command": " ".join(["python", *cmd[1:]]), "log": f"{step.name}.log"}
    if left_s < 10:
        record.update(rc=None, error="not started: the budget is spent")
        return record, None
    print(f"=== {step.name}: {record['command']}", flush=True)
    rc, seconds = run_logged(cmd, os.path.join(out_dir, f"{step.name}.log"), env,
                             left_s if smoke else min(step.timeout_s, left_s))
    record.update(rc=rc, seconds=round(seconds, 1))
    if rc != 0:
        record["error"] = f"exit {rc}" + (" (timed out)" if rc == 124 else "") + f": see {step.name}.log"
    result = None
    if os.path.exists(json_path):
        with open(json_path) as f:
            result = json.load(f)
    return record, result


def run_steps(steps: list[Step], out_dir: str, *, smoke: bool, budget_s: float, env: dict[str, str]) -> dict:
    """Each step in order, each within what is left of the budget: per step name, (record, parsed JSON or None)."""
    deadline = time.perf_counter() + budget_s
    done = {}
    for step in steps:
        done[step.name] = run_step(step, out_dir, smoke=smoke, left_s=deadline - time.perf_counter(), env=env)
        record = done[step.name][0]
        print(f"    {step.name}: {record.get('error', 'ok')} ({record.get('seconds', 0)} s)", flush=True)
    return done


# ---------------------------------------------------------------------------------------------------- collecting
def missing(error: str) -> dict[str, Any]:
    return {"median": None, "min": None, "max": None, "samples": [], "error": error}


def figure(summary: dict | None, error: str = "not measured") -> dict[str, Any]:
    """A figure's JSON form from a bench script's summary (which already holds its samples)."""
    if not summary or not summary.get("samples"):
        return missing(error)
    values = [float(v) for v in summary["samples"]]
    return {"median": float(summary["median"]), "min": min(values), "max": max(values), "samples": values}


def train_figures(result: dict, suffix: str) -> dict[str, dict]:
    row = result["rows"][0]
    if "error" in row:
        return {f"train_tokens_per_s_{suffix}": missing(row["error"]), f"train_mfu_{suffix}": missing(row["error"])}
    return {f"train_tokens_per_s_{suffix}": figure(row["tokens_per_s"]), f"train_mfu_{suffix}": figure(row["mfu"])}


def collect(done: dict) -> tuple[dict[str, Any], dict[str, str]]:
    """The figures from each step's JSON, and a label per figure saying what exactly it measured."""
    out: dict[str, Any] = {}
    labels: dict[str, str] = {}

    def result(name: str) -> dict | None:
        return done.get(name, (None, None))[1]

    for name, suffix in (("train_packed", "packed"), ("train_concat", "concat")):
        if r := result(name):
            out.update(train_figures(r, suffix))
            row = r["rows"][0]
            labels[f"train_mfu_{suffix}"] = (f"{r['args']['preset']}, seq {r['args']['seq_len']}, micro-batch "
                                             f"{row['batch']}, {r['args']['docs']} document(s) per row, attention "
                                             f"{row['attention']}; peak: {row.get('peak_flops_source')}")
            out["flop_per_token"] = row.get("mfu_flops_per_token")
            out["flop_per_token_original"] = row.get("flops_per_token_original")
    if r := result("attention"):
        out["attention_fwd_tflops_causal"] = figure(r.get("fwd_tflops_causal"), "causal row failed")
        out["attention_packed_vs_fair_baseline"] = figure(r.get("packed_vs_fair_baseline"), "no valid baseline ran")
        best = r.get("packed_vs_fair_baseline") or {}
        labels["attention_fwd_tflops_causal"] = f"{r['attention_impl']} forward, plain causal rows, work done"
        labels["attention_packed_vs_fair_baseline"] = (f"{r['attention_impl']} fwd+bwd / {best.get('best_baseline')} "
                                                       f"on {best.get('problem')} (the worse of equal and ragged)")
    if r := result("decode"):  # the first batch size is the b256 figure's, the second the b1024 one's
        for row, key in zip(r["rows"], ("decode_tokens_per_s_b256", "decode_tokens_per_s_b1024")):
            out[key] = figure(row["decode_tokens_per_s"])
            labels[key] = (f"batch {row['batch']}, prompts {row['prompt_min']}-{row['prompt']} tokens, {row['new']} "
                           "new, decode only (prefill subtracted)")
        out["decode_kernel_max_abs_err"] = (r.get("decode_kernels") or {}).get("pallas_gpu", {}).get("max_abs_err")
    if r := result("decode_kernels"):  # rows: pallas_gpu then mosaic_gpu, batch 256, run against run
        by_impl = {row["decode_impl"]: row for row in r["rows"]}
        if {"pallas_gpu", "mosaic_gpu"} <= set(by_impl):
            mosaic, triton = (by_impl[k]["decode_tokens_per_s"]["samples"] for k in ("mosaic_gpu", "pallas_gpu"))
            ratios = [x / y for x, y in zip(mosaic, triton)]
            out["decode_mosaic_vs_pallas_b256"] = figure({"samples": ratios, "median": statistics.median(ratios)})
            labels["decode_mosaic_vs_pallas_b256"] = ("decode tokens/s of the Mosaic GPU decode kernel / the Triton "
                                                      f"one, batch {by_impl['mosaic_gpu']['batch']}, same process")
        out["decode_mosaic_kernel_max_abs_err"] = (r.get("decode_kernels") or {}).get("mosaic_gpu", {}).get(
            "max_abs_err")
    if r := result("score"):
        out["score_tokens_per_s"] = figure(r["tokens_per_s"])
        labels["score_tokens_per_s"] = f"vocab {r['vocab']}, rows of {r['row_len']}, {r['sequences']} sequences"
    if r := result("estep"):
        variant = next(iter(r["results"].values()))
        out["estep_sampled_tokens_per_s"] = figure(variant["sampled_tokens_per_s"])
        labels["estep_sampled_tokens_per_s"] = f"{next(iter(r['results']))}, occupancy median " \
                                               f"{variant['occupancy']['median']:.0%}"
    return out, labels


def assemble(done: dict, env_info: dict, *, smoke: bool) -> dict[str, Any]:
    """headline.json: every figure key present (null values and the error where its step failed)."""
    figures, labels = collect(done)
    first = next((r for _, r in done.values() if r), {})
    out: dict[str, Any] = {}
    for key in FIGURES:
        record = done.get(STEP_OF[key], ({"error": "not run (--only)"}, None))[0]
        out[key] = figures.get(key) or missing(f"{STEP_OF[key]}: {record.get('error') or 'no figure in its JSON'}")
    out.update(decode_kernel_max_abs_err=figures.get("decode_kernel_max_abs_err"),
               decode_mosaic_kernel_max_abs_err=figures.get("decode_mosaic_kernel_max_abs_err"),
               decode_mosaic_vs_pallas_b256=figures.get("decode_mosaic_vs_pallas_b256")
               or missing("decode_kernels: no figure in its JSON"), device=env_info["device"],
               jax=env_info["jax"], commit=first.get("commit") or os.environ.get("BOLT_COMMIT", "unknown"),
               flop_per_token=figures.get("flop_per_token"),
               flop_per_token_original=figures.get("flop_per_token_original"), date=time.strftime("%Y-%m-%d"),
               smoke=smoke,
               flop_convention="LlamaConfig.flops_per_token: 6 x (parameters except the input embedding) + 6 L S D")
    out["targets"] = {key: {"target": t.text, "met": None if smoke else met(out[key], t)}
                      for key, t in targets(out["device"]).items()}  # a smoke run is judged against nothing
    out["labels"] = labels
    out["steps"] = {name: rec for name, (rec, _) in done.items()}
    return out


def met(fig: dict, t: Target) -> bool | None:
    """Judged on the median; None when the figure is missing."""
    if fig.get("median") is None:
        return None
    return fig["median"] >= t.value if t.op == ">=" else fig["median"] <= t.value


def fmt(key: str, fig: dict) -> str:
    """min / median / max in the figure's unit, and the number of samples."""
    if fig.get("median") is None:
        return f"missing ({fig.get('error')})"
    spec = ".1%" if "mfu" in key else ".3f" if "_vs_" in key else ".4g" if "tflops" in key else ",.0f"
    return " / ".join(format(fig[k], spec) for k in ("min", "median", "max")) + f"  (n={len(fig['samples'])})"


def report(h: dict) -> str:
    lines = [f"headline: {h['device']}, jax {h['jax']}, commit {h['commit']}, {h['date']}; FLOP/token "
             f"{(h['flop_per_token'] or 0) / 1e9:.4g} G ({h['flop_convention']})"
             + ("\nSMOKE: a tiny model on a CPU: figures meaningless, schema only" if h["smoke"] else ""),
             f"{'figure':<36} {'min / median / max':>44}  {'target':<26} met"]
    for key in FIGURES:
        t = h["targets"].get(key)
        verdict = "-" if t is None else "smoke" if h["smoke"] else {True: "met", False: "NOT MET", None: "-"}[t["met"]]
        lines.append(f"{key:<36} {fmt(key, h[key]):>44}  {t['target'] if t else '':<26} {verdict}")
    lines.append(f"{'decode_mosaic_vs_pallas_b256':<36} {fmt('_vs_', h['decode_mosaic_vs_pallas_b256']):>44}  "
                 "(Mosaic GPU decode kernel / Triton's, tokens/s)")
    for key, what in (("decode_kernel_max_abs_err", "Triton"), ("decode_mosaic_kernel_max_abs_err", "Mosaic GPU")):
        err = h.get(key)
        lines.append(f"{key:<36} {'-' if err is None else format(err, '.3g'):>44}  ({what} decode kernel vs XLA, "
                     "bf16)")
    lines += [f"  {k}: {v}" for k, v in h["labels"].items()]
    lines += [f"  step {name}: {rec.get('seconds', '-')} s, exit {rec.get('rc')}" for name, rec in h["steps"].items()]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on this CPU (same schema, figures meaningless)")
    p.add_argument("--device", choices=("auto", "cpu"), default="auto", help="cpu: the same as --smoke")
    p.add_argument("--only", default="", help="comma list of steps: " + ",".join(s.name for s in STEPS))
    p.add_argument("--results_root", default=os.path.join(BENCH, "results"))
    p.add_argument("--budget_s", type=float, default=540.0, help="no step starts after this many seconds are spent")
    a = p.parse_args()
    smoke = a.smoke or a.device == "cpu"
    names = a.only.split(",") if a.only else [s.name for s in STEPS]
    unknown = set(names) - {s.name for s in STEPS}
    if unknown:
        p.error(f"unknown steps {sorted(unknown)}; choose from {[s.name for s in STEPS]}")
    env = child_env(smoke)
    with tempfile.TemporaryDirectory() as probe_dir:  # the folder's name needs the device: probe it first
        info = probe_env(probe_dir, env)
        out_dir = results_dir(a.results_root, info["device"], smoke)
        shutil.move(os.path.join(probe_dir, "env.log"), os.path.join(out_dir, "env.log"))
    print(f"headline: {info['device']} ({info['backend']}), writing {out_dir}", flush=True)
    done = run_steps([s for s in STEPS if s.name in names], out_dir, smoke=smoke, budget_s=a.budget_s, env=env)
    h = assemble(done, info, smoke=smoke)
    from bolt_jax.runtime.atomic import atomic_write_json
    atomic_write_json(os.path.join(out_dir, "headline.json"), h)
    text = report(h)
    with open(os.path.join(out_dir, "headline.txt"), "w") as f:
        f.write(text + "\n")
    print("\n" + text + f"\n\nwrote {out_dir}/headline.json", flush=True)
    return 0 if all(rec.get("rc") == 0 for rec in h["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
