"""The console (issue 22): plain step lines and no bar spam when the output is a file, log lines above a live bar, no
third-party advisories, a one-line run summary instead of the config dump, `--describe`, a validation loss that
says why it is missing, eval's "written to" line, and the optional W&B tracker (offline)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import repo_root

ROOT = repo_root()
HAS_WANDB = importlib.util.find_spec("wandb") is not None
STEP_LINE = re.compile(r"step (\d+)/12 \| loss \d+\.\d{4} \| lr \S+ \| tokens/s [\d,]+ .*\| ETA \d+:\d\d:\d\d")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1", **extra)
    env.pop("BOLT_PROGRESS", None)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, prelude: str = "pass") -> subprocess.CompletedProcess:
    """`python -m bolt_jax.main ...` with stdout and stderr pipes (not a terminal, as under SLURM); `prelude` runs
    first in the child (e.g. to hide torch)."""
    code = f"import runpy, sys; {prelude}; sys.argv = ['bolt_jax.main', *sys.argv[1:]]; " \
           "runpy.run_module('bolt_jax.main', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env or _env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """12 steps logged every 4, validation every 100 steps (so never), W&B offline when wandb is installed."""
    run_dir = tmp_path_factory.mktemp("console") / "run"
    tracker = "tensorboard,wandb" if HAS_WANDB else "tensorboard"
    r = run_cli("--config", "configs/train_synthetic.py", f"--config.run_dir={run_dir}", "--config.train.steps=12",
                "--config.train.log_every=4", "--config.train.save_every=12", "--config.train.eval_every=100",
                f"--config.train.tracker={tracker}", "--config.data.seq_len=32",
                env=_env(WANDB_MODE="offline"))
    assert r.returncode == 0, r.stderr[-3000:]
    return r, run_dir


def test_training_on_a_non_terminal_prints_plain_step_lines(train_run):
    r, run_dir = train_run
    out = r.stdout + r.stderr
    assert "\r" not in out  # no bar redraws in a log file
    steps = [int(m.group(1)) for m in STEP_LINE.finditer(out)]
    assert steps == [4, 8, 12], out
    assert len(out.splitlines()) <= 20, out  # was ~150 lines (config dump + a bar line per step) for 40 steps
    assert "# resolved config" not in out and "on_change: refuse" not in out  # no config dump by default
    assert re.search(r"workflow train \| model tiny \([\d.]+M params\) \| mesh data=1 x fsdp=1 x tensor=1 .*"
                     r"\| steps 12 \| run_dir " + re.escape(str(run_dir)), r.stdout)
    config = json.loads((run_dir / "config.json").read_text())  # the trainer's, one home
    assert config["train"]["steps"] == 12 and config["train"]["tracker"].startswith("tensorboard")


def test_summary_says_why_validation_never_ran(train_run):
    r, run_dir = train_run
    assert "validation loss     never ran: train.steps=12 < train.eval_every=100" in r.stdout
    assert "nan" not in r.stdout
    assert json.loads((run_dir / "summary.json").read_text())["val_note"].startswith("never ran")


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (pip install 'bolt_jax[wandb]')")
def test_wandb_offline_writes_into_the_run_dir(train_run):
    r, run_dir = train_run
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").rglob("*"))
    run_id = (run_dir / "wandb" / "bolt_run_id").read_text().strip()
    assert runs[0].name.endswith(run_id) and list(runs[0].glob("run-*.wandb"))
    assert "wandb:" not in r.stdout + r.stderr  # quiet (WANDB_SILENT)


def test_tracker_is_validated_before_anything_runs(tmp_path):
    r = run_cli("--config", "configs/train_synthetic.py", "--dry_run", f"--config.run_dir={tmp_path / 'x'}",
                "--config.train.tracker=mlflow")
    assert r.returncode == 2 and "config.train.tracker='mlflow'; choose one of" in r.stderr, r.stderr


def test_print_config_shows_the_dump():
    r = run_cli("--config", "configs/summary_tiny.py", "--dry_run", "--print_config")
    assert r.returncode == 0, r.stderr
    assert "# resolved config" in r.stdout and "workflow: model_summary" in r.stdout
    assert "workflow model_summary | model" in r.stdout  # the one-line summary too


def test_describe_lists_every_key_with_its_doc(tmp_path):
    r = run_cli("--config", "configs/train_synthetic.py", "--describe", f"--config.run_dir={tmp_path / 'never'}",
                "--config.train.steps=7")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert re.fullmatch(r"train\.steps\s+7\s+1000", rows["train.steps"].rstrip())  # value, default, no comment
    assert rows["train.global_batch_size"].endswith("sequences per optimizer step, over all processes")
    assert "base learning rate" in rows["optim.lr"] and "wandb" in rows["train.tracker"]
    assert "attention" in rows["model.attention_impl"]  # a model field's comment (LlamaConfig)
    assert "True: compile the run's largest programs" in rows["dry_run"]  # documented in config.add_dry_run
    n, undocumented = map(int, re.fullmatch(r"(\d+) keys, (\d+) undocumented", lines[-1]).groups())
    assert n == len(rows) and 0 < undocumented < n
    assert not (tmp_path / "never").exists()  # nothing ran


def test_key_docs_from_source():
    from bolt_jax.runtime.config_docs import key_docs
    source = '''
def f():
    c = ConfigDict()
    c.a = 1  # the a
    # the b, explained
    # over two lines
    c.b = ConfigDict({"x": 1, "y": 2})
    c.mesh = ConfigDict({"data": 1, "fsdp": 2})  # 'data' and 'fsdp' axes
    return ConfigDict({
        "k": 3,  # the k
        "n": 4,
    })
'''
    docs = key_docs(source, "s.")
    assert docs["s.a"] == "the a" and docs["s.b"] == "the b, explained over two lines"
    assert docs["s.b.x"] == "" and docs["s.b.y"] == ""  # several keys on one line: only those a comment names
    assert docs["s.mesh.data"] == docs["s.mesh.fsdp"] == "'data' and 'fsdp' axes"
    assert docs["s.k"] == "the k" and docs["s.n"] == ""


def test_sections_are_found_from_their_default_functions():
    """--describe reads a section's keys and docs from `def default_<section>_config()`, found in the source."""
    from bolt_jax.main import section_sources
    sources = section_sources()
    assert sources["train"] == ["bolt_jax.train.loop:default_train_config"]
    assert sources["eval"] == ["bolt_jax.eval.run:default_eval_config"]
    assert sources["distributed"] == ["bolt_jax.runtime.distributed:default_distributed_config"]
    assert sources["model"][-1] == "bolt_jax.model.config:LlamaConfig"


@pytest.fixture
def console_setup(monkeypatch):
    """console.setup() in this process, with the loggers and the environment it changes restored afterwards."""
    from bolt_jax.runtime import console
    for key in ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "TRANSFORMERS_VERBOSITY", "WANDB_SILENT"):
        monkeypatch.delenv(key, raising=False)  # undone (restored) after the test
    root = logging.getLogger()
    names = ("bolt_jax", *console.NOISY_LOGGERS)
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in names})
    yield console
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def test_log_lines_go_above_a_live_bar(console_setup, monkeypatch, capsys):
    monkeypatch.setenv("BOLT_PROGRESS", "bar")
    console_setup.setup()
    bar = console_setup.progress(total=3, desc="train", unit="step")
    bar.update(1)
    logging.getLogger("bolt_jax.test").info("checkpoint written")
    bar.update(2)
    bar.close()
    err = capsys.readouterr().err
    segments = re.split(r"[\r\n]", err)
    assert any(s.endswith("INFO bolt_jax.test: checkpoint written") for s in segments), err
    assert not any("checkpoint written" in s and "train:" in s for s in segments), err  # never glued to the bar


def test_plain_progress_lines(console_setup, monkeypatch, caplog):
    monkeypatch.setenv("BOLT_PROGRESS", "plain")
    caplog.set_level(logging.INFO, logger="bolt_jax.progress")
    assert list(console_setup.progress(range(25), desc="eval", unit="prompt", log_every=10)) == list(range(25))
    lines = [r.getMessage() for r in caplog.records if r.name == "bolt_jax.progress"]
    assert lines[0] == "eval 0/25 prompt: started"
    assert [re.match(r"eval (\d+)/25 \(\d+%\)", x).group(1) for x in lines[1:]] == ["10", "20", "25"]
    assert all("ETA" in x for x in lines[1:])
    assert console_setup.format_eta(3725) == "1:02:05"


def test_a_stage_writes_its_lines_to_its_log_and_the_console_keeps_warnings(console_setup, monkeypatch, capsys,
                                                                             tmp_path):
    monkeypatch.setenv("BOLT_PROGRESS", "plain")
    console_setup.setup()
    log = logging.getLogger("bolt_jax.test")
    path = tmp_path / "logs" / "base.log"
    with console_setup.stage_output(str(path)):
        log.info("step 10/300 | loss 1.0")
        print("training summary")
        console_setup.progress(range(3), desc="E-step", unit="chunk").close()
        log.warning("disk nearly full")
    log.info("after the stage")
    out, err = capsys.readouterr()
    text = path.read_text()
    assert "INFO bolt_jax.test: step 10/300 | loss 1.0" in text and "training summary" in text
    assert "E-step 0/3 chunk: started" in text and "WARNING bolt_jax.test: disk nearly full" in text
    assert "step 10/300" not in err and "training summary" not in out and "E-step" not in err  # not on the console
    assert "disk nearly full" in err and "after the stage" in err  # warnings during, everything after
    with pytest.raises(RuntimeError):  # a failing stage restores the console too
        with console_setup.stage_output(str(path)):
            raise RuntimeError("boom")
    log.info("restored")
    assert "restored" in capsys.readouterr().err
    with console_setup.stage_output(None):  # None: no change
        log.info("shown")
    assert "shown" in capsys.readouterr().err


def test_eval_says_where_results_went_and_transformers_stays_quiet(tmp_path):
    from flax import nnx

    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.model import create_model, preset
    from bolt_jax.model.artifact import save_model
    from bolt_jax.model.llama import pure_dict
    from tests.helpers import build_tokenizer
    hide_torch = "sys.modules['torch'] = None"  # as on a machine without PyTorch (transformers' advisory)
    quiet = ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "TRANSFORMERS_VERBOSITY")
    env = {k: v for k, v in _env().items() if k not in quiet}
    control = subprocess.run([sys.executable, "-c", f"import sys; {hide_torch}; import transformers"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert "PyTorch was not found" in control.stderr  # the advisory the command line must silence
    tok_dir = build_tokenizer(tmp_path / "tok")
    cfg = preset("tiny", vocab_size=len(load_tokenizer(tok_dir).hf))
    save_model(tmp_path / "ckpt", pure_dict(nnx.state(create_model(cfg), nnx.Param)), cfg, tokenizer_dir=tok_dir)
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"What is {i}+{i}?", "answer": f"#### {2 * i}"}) + "\n"
                           for i in range(3)))
    r = run_cli("--config", "configs/eval_tinyllama.py", f"--config.run_dir={tmp_path}",
                f"--config.eval.checkpoint={tmp_path / 'ckpt'}", f"--config.eval.gsm8k_path={gsm}",
                "--config.eval.variants=gsm8k_cot", "--config.eval.max_new_tokens=4",
                "--config.eval.max_prompt_tokens=200", "--config.model.compute_dtype=float32", prelude=hide_torch,
                env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "PyTorch was not found" not in out and "\r" not in out
    assert f"eval results written to {tmp_path / 'eval'} (metrics.json, gsm8k_cot.json, config.json)" in r.stdout
    assert re.search(r"eval 3/3 \(100%\) \| gsm8k_cot", r.stderr), r.stderr
    assert json.loads((tmp_path / "eval" / "config.json").read_text())["eval"]["max_new_tokens"] == 4
