"""Writes constraints/{cpu,gpu,tpu}.txt: the exact version of every package an install of bolt_jax takes, per target.

    python tools/make_constraints.py                      # all three targets (run from any directory)
    python tools/make_constraints.py gpu                  # one
    python tools/make_constraints.py --seed_env ""        # no seed environment: newest versions under the anchors
    make constraints                                      # the same, seeded from the Makefile's .venv

For each target, pip resolves the target's requirements without installing anything (`pip install --dry-run
--ignore-installed --report`) under two sets of pins:
  1. the target's anchors (TARGETS below): the versions that target's code was tested or measured with;
  2. for every other package, the version in the seed environment (`--seed_env`, default .venv: the environment
     `make test` runs in), so that the three files agree wherever they can.
It writes the resolved set, one `name==version` a line, under a header saying what was tested where, how the file was
made and when. The resolution is for the interpreter running this script (the header names it): a package that only
another platform needs is not pinned, and resolves freely there. Use a file with `pip install -c constraints/<t>.txt`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = "bolt-jax"
# The CUDA 13 toolkit pieces that jax's wheels load, held to 13.0: the H100 runs reported CUDA runtime 13000.
CUDA_13_0 = tuple(f"{name}==13.0.*" for name in ("nvidia-cuda-runtime", "nvidia-cuda-nvcc", "nvidia-cuda-nvrtc",
                                                 "nvidia-cuda-cupti", "nvidia-nvjitlink", "nvidia-cuda-crt",
                                                 "nvidia-nvvm"))
# What the GPU kernels and benchmarks were measured with (bench/results/2026-11-22-h100/run11_env.log).
GPU_TESTED = ("jax==0.11.2", "jaxlib==0.11.2", "flax==0.12.10", "optax==0.2.8")
# TPU VMs take jax[tpu], whose libtpu must be on PyPI: 0.12.1's is not (yet), 0.12.0.1's is.
TPU_TESTED = ("jax==0.12.0.1", "jaxlib==0.12.0.1")


@dataclass(frozen=True)
class Resolution:
    extras: str  # the project's extras, resolved as `.[extras]`
    anchors: tuple[str, ...] = ()  # pins that win over the seed environment
    extra_requirements: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    install: str  # the command the header gives
    tested: str  # what was tested where, for the header
    resolutions: tuple[Resolution, ...]  # merged into one file (each package must come out at one version)


def torch_spec() -> str:
    """The Makefile's TORCH_SPEC: the torch `make test` installs (the Hugging Face oracle)."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        m = re.search(r"^TORCH_SPEC \?= *(\S+)", f.read(), re.M)
    if not m:
        sys.exit("error: no `TORCH_SPEC ?= ...` line in the Makefile")
    return m.group(1)


TARGETS = {
    "cpu": Target(
        install="pip install -c constraints/cpu.txt -e '.[test]'   (make test and make demo use this file)",
        tested="CPU: the versions of the seed environment, in which `make test` runs on the development machine "
               "(CPython 3.12, Linux x86_64, 8 simulated devices); torch is the Makefile's TORCH_SPEC",
        resolutions=(Resolution("test,eval,tokamax", extra_requirements=(torch_spec(),)),)),
    "gpu": Target(
        install="pip install -c constraints/gpu.txt -e '.[gpu]'   (driver >= 580; older drivers: '.[gpu-cuda12]')",
        tested="NVIDIA GPUs: jax 0.11.2, flax 0.12.10, optax 0.2.8 with CUDA runtime 13.0 are what the GPU kernels "
               "and BENCHMARKS.md were measured with, on one H100 (driver 580.159.04, 2026-11-22). Its other packages "
               "were not recorded: they come from the seed environment here. The cuda12 lines (jax-cuda12-*, "
               "nvidia-*-cu12) serve '.[gpu-cuda12]', never run on a GPU; their CUDA 12.9 runtime makes `auto` "
               "take pallas_gpu for causal attention (mosaic_gpu refuses CUDA 12.8-12.9)",
        resolutions=(Resolution("gpu,eval,tokamax", anchors=GPU_TESTED + CUDA_13_0),
                     Resolution("gpu-cuda12,eval,tokamax", anchors=GPU_TESTED))),
    "tpu": Target(
        install="pip install -c constraints/tpu.txt -e '.[tpu]'   (on every TPU VM worker)",
        tested="TPU VMs: never run on a TPU. jax 0.12.0.1 with the libtpu its jax[tpu] names: the newest pair on "
               "PyPI (jax 0.12.1's jax[tpu] asks for libtpu 0.0.53, not published as of 2026-12-07); the pallas_tpu "
               "kernel passed the Pallas TPU interpreter tests under it, and under jax 0.12.1 with libtpu 0.0.52",
        resolutions=(Resolution("tpu,eval,tokamax", anchors=TPU_TESTED),)),
}


JAX_RELEASED_WITH = re.compile(r"^(jaxlib|jax-cuda\d+-(plugin|pjrt)|libtpu)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return canonical(re.split(r"[=<>!~\[; ]", spec, maxsplit=1)[0])


def seed_pins(seed_env: str) -> dict[str, str]:
    """name -> `name==version` for every package of the seed environment (editable and URL installs left out)."""
    if not seed_env:
        return {}
    python = os.path.join(seed_env, "bin", "python")
    if not os.path.exists(python):
        sys.exit(f"error: seed environment {seed_env!r} has no bin/python (make it with `make venv`, or pass "
                 "--seed_env '' to resolve the newest versions)")
    out = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True,
                         check=True).stdout
    return {requirement_name(line): line.strip() for line in out.splitlines() if "==" in line and "@" not in line}


def resolve(resolution: Resolution, seeds: dict[str, str]) -> dict[str, str]:
    """canonical name -> version of everything `pip install .[extras]` would install under the pins."""
    anchored = {requirement_name(a) for a in resolution.anchors}
    if "jax" in anchored:  # jax's own plugins come at its version (and libtpu at the one its jax[tpu] names)
        anchored |= {n for n in seeds if JAX_RELEASED_WITH.match(n)}
    pins = list(resolution.anchors) + [s for n, s in sorted(seeds.items()) if n not in anchored and n != PROJECT]
    with tempfile.TemporaryDirectory() as tmp:
        constraints, report = os.path.join(tmp, "constraints.txt"), os.path.join(tmp, "report.json")
        with open(constraints, "w") as f:
            f.write("\n".join(pins) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
               report, "-c", constraints, f".[{resolution.extras}]", *resolution.extra_requirements]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"error: pip could not resolve .[{resolution.extras}] under the anchors {list(resolution.anchors)}"
                     f" and the seed pins:\n{proc.stderr.strip()}\n(an anchor no longer fits a seed: rerun with "
                     "--seed_env '' or change the anchor in tools/make_constraints.py)")
        with open(report) as f:
            installs = json.load(f)["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs
            if canonical(i["metadata"]["name"]) != PROJECT}


def header(name: str, target: Target, seed_env: str, seeds: dict[str, str]) -> str:
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    where = os.path.relpath(seed_env, ROOT) if seed_env else "none"
    seed = f"{where} (its {seeds['jax']})" if "jax" in seeds else where
    anchors = list(dict.fromkeys(a for r in target.resolutions for a in r.anchors))
    lines = [
        f"constraints/{name}.txt: every package version an install of bolt_jax takes on this target.",
        f"Use: {target.install}",
        f"Tested: {target.tested}.",
        f"Made by `python tools/make_constraints.py {name}` on {time.strftime('%Y-%m-%d')}: pip {pip_version} "
        f"resolved (--dry-run --report) for CPython {platform.python_version()} on {platform.system()} "
        f"{platform.machine()}; anchors: {', '.join(anchors) or 'none'}; seed environment: {seed}.",
        "Other platforms: packages only they need are not pinned here. Do not edit by hand: rerun the script.",
    ]
    wrapped = []
    for line in lines:
        while len(line) > 116:
            cut = line.rfind(" ", 0, 116)
            wrapped.append(line[:cut])
            line = "  " + line[cut + 1:]
        wrapped.append(line)
    return "".join(f"# {line}\n" for line in wrapped)


def make(name: str, seed_env: str) -> str:
    target = TARGETS[name]
    seeds = seed_pins(seed_env)
    merged: dict[str, str] = {}
    for resolution in target.resolutions:
        for pkg, version in resolve(resolution, seeds).items():
            if merged.setdefault(pkg, version) != version:
                sys.exit(f"error: {name}: {pkg} resolves to {merged[pkg]} and {version} in two of its resolutions")
    path = os.path.join(ROOT, "constraints", f"{name}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(header(name, target, seed_env, seeds))
        f.writelines(f"{pkg}=={version}\n" for pkg, version in sorted(merged.items()))
    os.replace(path + ".tmp", path)
    return f"{os.path.relpath(path)}: {len(merged)} packages, jax {merged.get('jax')}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(TARGETS)} (default: all)")
    ap.add_argument("--seed_env", default=os.path.join(ROOT, ".venv"),
                    help="a virtual environment whose versions the files keep where the anchors allow ('' = none)")
    args = ap.parse_args()
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}: choose from {', '.join(TARGETS)}")
    for name in args.targets or TARGETS:
        print(make(name, args.seed_env), flush=True)


if __name__ == "__main__":
    main()
