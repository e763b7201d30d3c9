"""Bad inputs fail before anything is built (issue 20, item 3): exit status != 0, at most two lines on stderr naming
the key, its value and the fix, no traceback, nothing half-written; `--dry_run` checks that the inputs exist."""

import json
import os
import re
import subprocess
import sys

import pytest

from bolt_jax import workflows
from tests.helpers import repo_root

ROOT = repo_root()


def run_cli(*args, env=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8", **(env or {}))
    return subprocess.run([sys.executable, "-m", "bolt_jax.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_clean_failure(r, *needles):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert 1 <= len(lines) <= 2, r.stderr
    assert lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"Doc {i}. It has two sentences. And a third."}) + "\n"
                            for i in range(4)))
    return path


# ------------------------------------------------------------------------------------------------ optimizer
@pytest.mark.parametrize("value", ["nan", "inf", "-0.001"])
def test_bad_learning_rate_fails_before_building(value, tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("--config", "configs/train_synthetic.py", f"--config.optim.lr={value}", f"--config.run_dir={run_dir}")
    assert_clean_failure(r, f"config.optim.lr={value}", "--config.optim.lr=")
    assert not run_dir.exists()  # nothing built, nothing written


@pytest.mark.parametrize("key, value", [("warmup_steps", -1), ("lr_min_ratio", 2.0), ("b1", 1.0), ("b2", -0.5),
                                        ("eps", 0.0), ("eps", float("nan")), ("weight_decay", -0.1),
                                        ("weight_decay", float("inf")), ("clip_grad_norm", float("nan"))])
def test_bad_optimizer_numbers(key, value):
    from bolt_jax.train.optim import default_optim_config, validate_optim_config
    c = workflows_config("configs/train_synthetic.py")
    validate_optim_config(c)  # the shipped values pass
    c.optim = default_optim_config()
    c.optim[key] = value
    with pytest.raises(ValueError, match=rf"config\.optim\.{key}=.* must be .*--config\.optim\.{key}="):
        validate_optim_config(c)


@pytest.mark.parametrize("key, value, message", [
    ("num_samples", 0, "num_samples=0 must be >= 1"), ("top_p", 0.0, "top_p=0.0 must be in (0, 1]"),
    ("temperature", -1.0, "temperature=-1.0 must be a finite number >= 0"),
    ("max_new_tokens", 0, "max_new_tokens=0 must be >= 1"),
    ("chunks_per_batch", 0, "chunks_per_batch=0 must be a whole number >= 1"),
    ("max_tokens", 1, "max_tokens=1 must be a whole number >= 2"), ("seed", -1, "seed=-1 must be a whole number"),
    ("elbo_samples", [1, 0], "elbo_samples=[1, 0]: each n must be a whole number >= 1"),
    ("accounting", "fixed", "accounting='fixed' is not one of ['corrected', 'original']"),
    ("split_mode", "line", "split_mode='line' is not one of ['paragraph', 'sentence', 'word']"),
    ("max_units_per_chunk", 0, "random chunking needs 0 < min_units_per_chunk (1) < units_per_chunk (8) and "
                               "max_units_per_chunk (0) >= min_units_per_chunk"),
    ("slice", "2:2", "slice='2:2': need 0 <= i < n")])
def test_bad_estep_settings_fail_before_anything_compiles(key, value, message):
    """The E-step's settings at validation, K and sampling by the sampler's own checks (a dry run compiled the
    E-step's programs from num_samples=0 and died dividing by it; a misspelt accounting or split mode, a negative
    seed or a zero chunk cap failed only once documents were read, or never ended)."""
    c = workflows_config("configs/bolt_bootstrap_fixed.py")
    workflows.validate(c, num_devices=8)  # the shipped values pass
    c.estep[key] = value
    with pytest.raises(ValueError, match=r"^config\.estep(\.|: )" + re.escape(message)):
        workflows.validate(c, num_devices=8)


def test_bad_finetune_learning_rate():
    c = workflows_config("configs/finetune_eval_gsm8k.py")
    c.finetune.lr = -1e-4
    with pytest.raises(ValueError, match=r"config\.finetune\.lr=-0\.0001"):
        workflows.validate(c, num_devices=8)


def workflows_config(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("_cfg", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


# ------------------------------------------------------------------------------------------------ enumerations
@pytest.mark.parametrize("config, arg, needle", [
    ("configs/demo.py", "--config.data.packing=foo", "config.data.packing='foo'"),
    ("configs/demo.py", "--config.data.latent_type=foo", "config.data.latent_type='foo'"),
    ("configs/train_synthetic.py", "--config.data.source=foo", "config.data.source='foo'"),
    ("configs/synth_gpt4o_mini.py", "--config.synth.mode=foo", "config.synth.mode='foo'"),
    ("configs/synth_gpt4o_mini.py", "--config.synth.method=foo", "config.synth.method='foo'"),
])
def test_bad_enumeration_fails_in_validation(config, arg, needle):
    r = run_cli("--config", config, arg, "--dry_run")
    assert_clean_failure(r, needle, "set ")


def test_bad_packing_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("--config", "configs/demo.py", "--config.data.packing=foo", f"--config.run_dir={run_dir}")
    assert_clean_failure(r, "config.data.packing='foo'")
    assert not run_dir.exists()


@pytest.mark.parametrize("key, value", [("max_usd", float("nan")), ("max_usd", -1.0), ("concurrency", 0),
                                        ("units_per_chunk", 1), ("temperature", float("inf"))])
def test_bad_synth_numbers(key, value, corpus):
    from bolt_jax.synth.run import validate_synth_config
    c = workflows_config("configs/synth_gpt4o_mini.py")
    c.synth.update(corpus_path=str(corpus), output_path="out.jsonl")
    validate_synth_config(c)
    c.synth[key] = value
    with pytest.raises(ValueError, match=rf"config\.synth\.{key}="):
        validate_synth_config(c)


# ------------------------------------------------------------------------------------------------ missing inputs
def test_missing_config_file_without_overrides():
    r = run_cli("--config", "configs/does_not_exist.py")
    assert_clean_failure(r, "configs/does_not_exist.py", "does not exist")


def test_missing_train_inputs_fail_the_dry_run(tmp_path, corpus):
    base = ["--config", "configs/bolt_synth_compare.py", "--dry_run", f"--config.run_dir={tmp_path / 'run'}"]
    r = run_cli(*base, f"--config.data.train_path={tmp_path / 'nope.jsonl'}")
    assert_clean_failure(r, f"config.data.train_path='{tmp_path / 'nope.jsonl'}' does not exist",
                         "also missing or invalid: config.data.tokenizer_path")
    r = run_cli(*base, f"--config.data.train_path={corpus}", "--config.data.validation_path=",
                "--config.train.eval_every=0", f"--config.train.init_checkpoint={tmp_path}")
    assert_clean_failure(r, "config.data.tokenizer_path='checkpoints/tinyllama_bolt/tokenizer' does not exist",
                         "also missing or invalid: config.train.init_checkpoint")
    assert not (tmp_path / "run").exists()


def test_missing_init_checkpoint_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("--config", "configs/train_synthetic.py", f"--config.train.init_checkpoint={tmp_path / 'ckpt'}",
                f"--config.run_dir={run_dir}")
    assert_clean_failure(r, f"config.train.init_checkpoint='{tmp_path / 'ckpt'}' does not exist",
                         "--config.train.init_checkpoint")
    assert not run_dir.exists()


def test_missing_estep_inputs_fail_the_dry_run(tmp_path):
    r = run_cli("--config", "configs/demo.py", "--config.workflow=estep", "--dry_run",
                f"--config.estep.checkpoint={tmp_path / 'ckpt'}", f"--config.estep.corpus_path={tmp_path / 'c.jsonl'}")
    assert_clean_failure(r, f"config.estep.checkpoint='{tmp_path / 'ckpt'}' does not exist",
                         "also missing or invalid: config.estep.corpus_path")


def test_missing_synth_corpus_fails_the_dry_run(tmp_path):
    r = run_cli("--config", "configs/synth_gpt4o_mini.py", "--dry_run",
                f"--config.synth.corpus_path={tmp_path / 'c.jsonl'}", f"--config.synth.output_path={tmp_path / 'o'}")
    assert_clean_failure(r, f"config.synth.corpus_path='{tmp_path / 'c.jsonl'}' does not exist")


def test_missing_prepare_source_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = run_cli("--config", "configs/prepare_toy.py", f"--config.prepare.source={tmp_path / 'c.jsonl'}",
                f"--config.prepare.output_dir={out}")
    assert_clean_failure(r, f"config.prepare.source='{tmp_path / 'c.jsonl'}' does not exist")
    assert not out.exists()


@pytest.mark.parametrize("config, changes, needle", [
    ("configs/eval_tinyllama.py", {}, "config.eval.checkpoint is not set"),
    ("configs/eval_tinyllama.py", {"eval.checkpoint": "TMP"}, "is not a complete model checkpoint"),
    ("configs/generate.py", {"generate.checkpoint": "TMP/x"}, "config.generate.checkpoint='TMP/x' does not exist"),
    ("configs/finetune_eval_gsm8k.py", {}, "config.finetune.checkpoint is not set"),
    ("configs/bolt_bootstrap_fixed.py", {}, "config.bootstrap.base_checkpoint='checkpoints/tinyllama_bolt'"),
    ("configs/demo.py", {"bootstrap.base_checkpoint": "TMP/b"}, "config.bootstrap.base_checkpoint='TMP/b'"),
    ("configs/train_synthetic.py", {"train.eval_every": 5}, None),  # synthetic data: nothing to read
    ("configs/demo.py", {}, None),  # the demo writes its own data
])
def test_inputs_of_every_workflow(tmp_path, config, changes, needle):
    from bolt_jax.config import derive
    from bolt_jax.workflows.inputs import MissingInputError
    c = derive(workflows_config(config), {k: v.replace("TMP", str(tmp_path)) if isinstance(v, str) else v
                                          for k, v in changes.items()})
    workflows.validate(c, num_devices=8)  # settings alone pass
    if needle is None:
        workflows.validate(c, num_devices=8, check_files=True)
        return
    with pytest.raises(MissingInputError) as e:
        workflows.validate(c, num_devices=8, check_files=True)
    assert needle.replace("TMP", str(tmp_path)) in str(e.value) and len(str(e.value).splitlines()) <= 2


# ------------------------------------------------------------------------------------------------ outputs, budget
def test_prepare_into_an_existing_output(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    for extra in ([], ["--dry_run"]):
        r = run_cli("--config", "configs/prepare_toy.py", f"--config.prepare.output_dir={tmp_path}", *extra)
        assert_clean_failure(r, f"config.prepare.output_dir='{tmp_path}'", "--config.prepare.overwrite=True")
    assert (tmp_path / "manifest.json").read_text() == "{}" and sorted(os.listdir(tmp_path)) == ["manifest.json"]


def test_prepare_function_refuses_an_existing_output(tmp_path):
    from bolt_jax.data.prepare import prepare
    prepare(source="toy:30:0", output_dir=str(tmp_path), validation_slice="0:1:10")
    with pytest.raises(FileExistsError, match="prepare.output_dir") as e:
        prepare(source="toy:30:0", output_dir=str(tmp_path))
    assert "--config.prepare.overwrite=True" in str(e.value) and len(str(e.value).splitlines()) == 2


def test_synth_budget_stops_with_partial_stats(tmp_path, corpus):
    from tests.fake_openai import FakeOpenAI
    server = FakeOpenAI()
    try:
        out = tmp_path / "out" / "aug.jsonl"
        r = run_cli("--config", "configs/synth_gpt4o_mini.py", f"--config.synth.corpus_path={corpus}",
                    f"--config.synth.output_path={out}", f"--config.synth.base_url={server.base_url}",
                    "--config.synth.env_file=", "--config.synth.max_usd=0.00001", "--config.synth.units_per_chunk=2",
                    env={"OPENAI_API_KEY": "sk-test-0123"})
        assert_clean_failure(r, "config.synth.max_usd=1e-05", "--config.synth.max_usd=")
        assert "synth stopped at the budget: 0 of " in r.stdout, r.stdout[-2000:]
        assert sum(server.billed.values()) == 0 and not server.batches
        assert not out.exists() and not out.with_suffix(".stats.json").exists()
    finally:
        server.close()


def test_synth_without_api_key_fails_the_dry_run(tmp_path, corpus):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", "--config", "configs/synth_gpt4o_mini.py", "--dry_run",
                        f"--config.synth.corpus_path={corpus}", f"--config.synth.output_path={tmp_path / 'o.jsonl'}",
                        "--config.synth.env_file="], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(env, JAX_PLATFORMS="cpu"))
    assert_clean_failure(r, "OPENAI_API_KEY", "config.synth.env_file")


# ------------------------------------------------------------------------------------------------ main's handling
def test_runtime_user_errors_print_one_message_bugs_keep_tracebacks(monkeypatch, capsys):
    monkeypatch.setenv("BOLT_XLA_DEFAULTS", "0")
    from bolt_jax import main
    from bolt_jax.synth.api import BudgetExceeded
    for error in (FileNotFoundError("config.x='y' went missing"), FileExistsError("out exists\nuse overwrite"),
                  BudgetExceeded("config.synth.max_usd=1 stopped the run\nraise it")):
        monkeypatch.setattr(workflows, "run", lambda c, error=error: (_ for _ in ()).throw(error))
        with pytest.raises(SystemExit) as e:
            main.run_workflow(None)
        assert e.value.code == 2
        assert capsys.readouterr().err == f"error: {error.args[0]}\n"
    monkeypatch.setattr(workflows, "run", lambda c: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        main.run_workflow(None)
    monkeypatch.setenv("BOLT_TRACEBACK", "1")
    monkeypatch.setattr(workflows, "run", lambda c: open("/nonexistent/x"))
    with pytest.raises(FileNotFoundError):
        main.run_workflow(None)


@pytest.mark.parametrize("overrides, needle", [
    ({"prefix_sharing": True, "scheduler": "static"}, r"config\.estep\.prefix_sharing=True needs"),
    ({"prompt_entries": 4}, r"config\.estep\.prompt_entries=4 must be >= 0 .* needs config\.estep\.prefix_sharing"),
    ({"prompt_entries": -1, "prefix_sharing": True, "scheduler": "continuous"}, r"config\.estep\.prompt_entries=-1"),
])
def test_bad_prefix_sharing_settings(overrides, needle):
    c = workflows_config("configs/demo.py")
    c.workflow = "estep"
    c.estep.update(overrides)
    with pytest.raises(ValueError, match=needle):
        workflows.validate(c, num_devices=8)


@pytest.mark.parametrize("mesh, needle", [
    ({"data": 3}, r"config\.sampling_mesh"),
    ({"data": 1, "tensor": 8}, r"config\.sampling_mesh\.tensor=8 does not divide"),
])
def test_bad_sampling_mesh(mesh, needle):
    c = workflows_config("configs/demo.py")
    c.sampling_mesh.update(mesh)
    with pytest.raises(ValueError, match=needle):
        workflows.validate(c, num_devices=8)
