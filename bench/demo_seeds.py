"""The toy demo on several seeds: runs `configs/demo.py` once per seed (or reads finished runs) and writes every
seed's figures and claims to bench/results/demo_seeds-<date>.json and .md (`--tag T`: demo_seeds-<date>-T.*; an
existing summary is never overwritten).

    python bench/demo_seeds.py --seeds 0 1 2 --run_root runs/seeds            # run, then summarise
    python bench/demo_seeds.py --seeds 0 1 --run_root runs/seeds --parallel    # one seed per core (taskset)
    python bench/demo_seeds.py --collect runs/seeds/seed_0 runs/seeds/seed_1   # summarise finished runs only
    python bench/demo_seeds.py --k_sweep runs/demo_k_sweep   # file a finished K sweep's k_sweep.{json,md} too

A seed's minutes are only the demo's own when it ran alone on the machine; `--parallel` runs say so in the output.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_seeds(seeds: list[int], run_root: str, parallel: bool, extra: list[str]) -> list[str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    dirs, procs = [], []
    for n, seed in enumerate(seeds):
        run_dir = os.path.join(os.path.abspath(run_root), f"seed_{seed}")
        dirs.append(run_dir)
        cmd = [sys.executable, "-m", "bolt_jax.main", "--config", "configs/demo.py", f"--config.seed={seed}",
               f"--config.run_dir={run_dir}", "--config.train.progress_bar=False", *extra]
        if parallel:
            cmd = ["taskset", "-c", str(n % os.cpu_count()), *cmd]
        os.makedirs(run_dir, exist_ok=True)
        log = open(os.path.join(run_dir, "demo.log"), "w")
        print(f"seed {seed}: {' '.join(cmd)}", flush=True)
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        if parallel:
            procs.append(p)
        elif p.wait():
            raise SystemExit(f"seed {seed} failed: see {run_dir}/demo.log")
    for seed, p in zip(seeds, procs):
        if p.wait():
            raise SystemExit(f"seed {seed} failed")
    return dirs


def summarise(run_dirs: list[str], parallel: bool, alone: tuple[str, ...] = ()) -> dict:
    rows = []
    for d in run_dirs:
        with open(os.path.join(d, "report.json")) as f:
            r = json.load(f)
        m = r["models"]
        last = f"iter_{len(r['iterations'])}"
        rows.append({
            "run_dir": d, "seed": r["config"]["seed"], "commit": r["commit"],
            "minutes_of_stages": r["total_seconds"] / 60, "shared_cores": parallel and d not in alone,
            "iterations": [{k: it.get(k) for k in ("iteration", "sample_correct", "sample_correct_se",
                                                  "chosen_correct", "chosen_correct_se", "ess")}
                           for it in r["iterations"]],
            "heldout_accuracy": {n: (v["heldout_accuracy"], v["heldout_accuracy_se"]) for n, v in m.items()},
            "neg_elbo_per_token": {n: (v["neg_elbo_per_token"], v["neg_elbo_per_token_se"]) for n, v in m.items()
                                   if v.get("neg_elbo_per_token") is not None},
            "nll_per_token": {n: (v["nll_per_token"], v["nll_per_token_se"]) for n, v in m.items()
                              if v.get("nll_per_token") is not None},
            "last_model": last, "checks": r["checks"]})
    return {"date": datetime.date.today().isoformat(), "runs": rows}


def markdown(summary: dict) -> str:
    lines = [f"# make demo on several seeds ({summary['date']})", "",
             "Chosen / sample: share of the E-step's chosen thoughts / of its K samples that are the true chain "
             "(per E-step). Held-out: greedy accuracy on 200 held-out problems (± bootstrap SE about 0.03). "
             "-ELBO_4: nats per validation text token, lower is better.", "",
             "| seed | sample correct per E-step | chosen correct per E-step | "
             "held-out warmstart / iter_1 / ... / last | "
             "raw token / FLOP match | -ELBO_4 warmstart / last | claims met | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        acc = r["heldout_accuracy"]
        def a(n):
            return f"{acc[n][0]:.3f}" if n in acc and acc[n][0] is not None else "-"
        e = r["neg_elbo_per_token"]
        met = sum(c["passed"] for c in r["checks"])
        lines.append(
            f"| {r['seed']} | {', '.join(f'{i['sample_correct']:.2f}' for i in r['iterations'])} | "
            f"{', '.join(f'{i['chosen_correct']:.2f}' for i in r['iterations'])} | "
            f"{' / '.join(a(n) for n in ('warmstart', *(f'iter_{i['iteration']}' for i in r['iterations'])))} | "
            f"{a('raw_token_match')} / {a('raw_flops_match')} | "
            f"{e['warmstart'][0]:.4f} / {e[r['last_model']][0]:.4f} | {met} of {len(r['checks'])} | "
            f"{r['minutes_of_stages']:.1f}{' (shared cores)' if r['shared_cores'] else ''} |")
    lines += ["", "Claims per seed:", ""]
    for r in summary["runs"]:
        lines += [f"- seed {r['seed']}: " + "; ".join(
            f"{'yes' if c['passed'] else 'NO'}: {c['name']} ({c['detail']})" for c in r["checks"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[])
    ap.add_argument("--run_root", default="runs/seeds")
    ap.add_argument("--parallel", action="store_true", help="one seed per core at once (minutes then shared)")
    ap.add_argument("--collect", nargs="*", default=[], help="finished run dirs to summarise instead of running")
    ap.add_argument("--ran_alone", nargs="*", default=[], help="of --collect: the runs that had the machine alone")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--k_sweep", default="", help="a finished configs/demo_k_sweep.py run dir to file as well")
    ap.add_argument("--tag", default="", help="demo_seeds-<date>-<tag>.*: a second summary on one date")
    args, extra = ap.parse_known_args()
    if args.k_sweep:
        import shutil
        os.makedirs(args.out, exist_ok=True)
        for ext in ("json", "md", "png"):
            dst = os.path.join(args.out, f"k_sweep-{datetime.date.today().isoformat()}.{ext}")
            shutil.copyfile(os.path.join(args.k_sweep, f"k_sweep.{ext}"), dst)
            print(f"written: {dst}")
        if not (args.collect or args.seeds):
            return
    if not (args.collect or args.seeds):
        ap.error("give --seeds to run, --collect RUN_DIR... to summarise, or --k_sweep RUN_DIR")
    stem = os.path.join(args.out, f"demo_seeds-{datetime.date.today().isoformat()}" + (f"-{args.tag}" if args.tag
                                                                                      else ""))
    if os.path.exists(stem + ".json"):  # before running anything: an earlier summary is never overwritten
        ap.error(f"{stem}.json exists; give --tag NAME for another summary on this date")
    dirs = args.collect or run_seeds(args.seeds, args.run_root, args.parallel, extra)
    summary = summarise(dirs, parallel=args.parallel or bool(args.collect), alone=tuple(args.ran_alone))
    os.makedirs(args.out, exist_ok=True)
    text = markdown(summary)
    with open(stem + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text + f"\nwritten: {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
