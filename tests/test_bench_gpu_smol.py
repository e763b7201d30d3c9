"""bench/gpu_smol.sh, the SmolLM2 run's two-call transfer to a lent GPU: the model file split by `pack` comes back
byte for byte from `run` (checked against the original's sha256), `run` stops at once when part 1 is not on the
machine, a damaged part is refused, and what comes back holds the run's reports but not its checkpoints.

The script runs in a throwaway git repository (it measures what a call carries with git) with a stub python that
stands in for pip and the workflow; the real workflow under the GPU image's packages is `bash bench/gpu_smol.sh
rehearse` (BENCHMARKS.md)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Stands in for python3: pip and the jax check succeed; the workflow writes what a run writes (a report, a stage log,
# a checkpoint, the converted model) and records its arguments; STUB_RC is its exit status.
STUB_PYTHON = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "bolt_jax.main" ]; then
  echo "$@" > "$STUB_ARGS"
  for a in "$@"; do case $a in --config.run_dir=*) d=${a#--config.run_dir=};; esac; done
  mkdir -p "$d/logs" "$d/base_model" "$d/runs/iter_1/checkpoints/2" "$d/runs/iter_1/model" "$d/xla_cache"
  echo "# report" > "$d/report.md"; echo '{}' > "$d/report.json"; echo "stage log" > "$d/logs/warmstart.log"
  echo '{"loss": 1}' > "$d/runs/iter_1/metrics.jsonl"; echo '{}' > "$d/runs/iter_1/checkpoints/2/state.json"
  echo '{}' > "$d/runs/iter_1/model/config.json"; echo '{}' > "$d/base_model/config.json"
  exit ${STUB_RC:-0}
fi
[ "$1" = "-c" ] && echo "jax stub"
exit 0
"""


@pytest.fixture()
def repo(tmp_path):
    """A git repository holding the script, a stub python, a 3 MiB model file, GSM8K files and a wheel folder."""
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "bench", "gpu_smol.sh"), repo / "bench" / "gpu_smol.sh")
    (repo / ".gitignore").write_text("/.smol/\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    gsm8k = tmp_path / "gsm8k"
    gsm8k.mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        (gsm8k / name).write_text('{"question": "q", "answer": "a\\n#### 1"}\n')
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "grain-0-py3-none-any.whl").write_bytes(b"stub")
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    return repo, gguf, gsm8k, wheels, stub, tmp_path


def _script(repo, step, **env):
    full = {**os.environ, "SMOL_PART_A_MIB": "1", **{k: str(v) for k, v in env.items()}}
    return subprocess.run(["bash", str(repo / "bench" / "gpu_smol.sh"), step], cwd=repo, env=full,
                          capture_output=True, text=True, timeout=120)


def _pack(repo, gguf, gsm8k, wheels):
    done = _script(repo, "pack", GGUF=gguf, GSM8K_DIR=gsm8k, WHEELS=wheels)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_pack_stage_run_bring_back_the_file_and_the_reports(repo):
    repo, gguf, gsm8k, wheels, stub, tmp = repo
    packed = _pack(repo, gguf, gsm8k, wheels)
    assert "call 1 (stage) carries" in packed.stdout
    assert (repo / ".smol/a/gguf.part1").stat().st_size == 1024 * 1024
    assert (repo / ".smol/b/whl/grain-0-py3-none-any.whl").is_file()
    kept, out, run_dir, model_dir = tmp / "kept", tmp / "out", tmp / "run", tmp / "model"
    staged = _script(repo, "stage", PARTS_KEPT=kept)
    assert staged.returncode == 0 and (kept / "gguf.part1").is_file(), staged.stdout + staged.stderr
    shutil.rmtree(repo / ".smol/a")  # the run must find part 1 where stage kept it
    env = dict(PARTS_KEPT=kept, OUT=out, SMOL_RUN_DIR=run_dir, SMOL_MODEL_DIR=model_dir, SMOL_PYTHON=stub,
               SMOL_SITE=tmp / "site", STUB_ARGS=tmp / "args", BOLT_COMMIT="abc1234")
    done = _script(repo, "run", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    joined = (model_dir / GGUF_NAME).read_bytes()
    assert hashlib.sha256(joined).digest() == hashlib.sha256(gguf.read_bytes()).digest()
    args = (tmp / "args").read_text()
    assert "--config configs/smol_gsm8k.py" in args and f"--config.smol.gguf={model_dir}/{GGUF_NAME}" in args
    assert "--config.smol.gsm8k_dir=.smol/b/gsm8k" in args and f"--config.run_dir={run_dir}" in args
    with tarfile.open(out / "smol_run.tar.gz") as tar:
        names = {os.path.normpath(n) for n in tar.getnames() if tar.getmember(n).isfile()}
    assert names == {"report.md", "report.json", "logs/warmstart.log", "runs/iter_1/metrics.jsonl"}
    assert (out / "report.md").is_file() and "commit abc1234" in (out / "run.txt").read_text()
    failed = _script(repo, "run", **env, STUB_RC=7)  # the workflow's exit status is the script's
    assert failed.returncode == 7 and "exit 7" in failed.stdout


def test_run_stops_at_once_without_part_1_and_refuses_a_damaged_file(repo):
    repo, gguf, gsm8k, wheels, stub, tmp = repo
    _pack(repo, gguf, gsm8k, wheels)
    env = dict(OUT=tmp / "out", SMOL_RUN_DIR=tmp / "run", SMOL_MODEL_DIR=tmp / "model", SMOL_PYTHON=stub,
               SMOL_SITE=tmp / "site", STUB_ARGS=tmp / "args")
    shutil.move(repo / ".smol/a", tmp / "a")
    missing = _script(repo, "run", PARTS_KEPT=tmp / "nothing", **env)
    assert missing.returncode == 3 and "call stage, then run, again" in missing.stdout
    shutil.move(tmp / "a", repo / ".smol/a")
    part2 = repo / ".smol/b/gguf.part2"
    data = part2.read_bytes()
    part2.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one byte changed
    damaged = _script(repo, "run", PARTS_KEPT=tmp / "nothing", **env)
    assert damaged.returncode == 1 and "sha256 differs" in damaged.stdout
    assert not (tmp / "args").exists()  # nothing ran
