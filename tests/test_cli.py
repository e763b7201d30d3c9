"""The command line: `python -m bolt_jax.main --config ...` validates, says what runs, runs, and fails clearly."""

import os
import subprocess
import sys

import pytest

from bolt_jax import workflows
from tests.helpers import repo_root

ROOT = repo_root()


def run_cli(*args, devices=8):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run([sys.executable, "-m", "bolt_jax.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_model_summary_runs_on_a_2x2x2_mesh():
    r = run_cli("--config", "configs/summary_tiny.py", "--config.mesh.data=2", "--config.mesh.tensor=2")
    assert r.returncode == 0, r.stderr
    assert "mesh: data=2 x fsdp=2 x tensor=2" in r.stdout
    assert "layers/self_attn/q_proj/kernel" in r.stdout and "P(None, 'fsdp', 'tensor')" in r.stdout
    assert "parameters: 158,016 (closed form 158,016)" in r.stdout
    assert "workflow model_summary | model tiny" in r.stdout  # one line says what runs (--print_config: the dump)
    assert "# resolved config" not in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--config.model.hiden_size=3"], "unknown config key --config.model.hiden_size; keys of config.model:"),
    (["--config.workflow=nope"], "is not a workflow; available: ["),
    (["--config.mesh.data=3"], "config.mesh"),
    (["--config.model.num_key_value_heads=3"], "not divisible by num_key_value_heads"),
    (["--config.mesh.tensor=8", "--config.mesh.fsdp=1"], "does not divide config.model.num_attention_heads"),
    (["--config.rules.vocab=model"], "unknown mesh axis"),
])
def test_bad_config_fails_with_clear_message(args, message):
    r = run_cli("--config", "configs/summary_tiny.py", "--dry_run", *args)
    assert r.returncode == 2
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_file():
    r = run_cli("--config", "configs/does_not_exist.py", "--config.seed=1")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_list_workflows():
    r = run_cli("--list_workflows")
    assert r.returncode == 0 and "model_summary" in r.stdout


def test_every_config_file_validates():
    """Each shipped config builds and validates against 8 devices (no compile, no data)."""
    import importlib.util
    for path in sorted((ROOT / "configs").glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        workflows.validate(module.get_config(), num_devices=8)


def test_prepare_workflow_from_the_command_line(tmp_path):
    import json
    r = run_cli("--config", "configs/prepare_toy.py", f"--config.prepare.output_dir={tmp_path}",
                "--config.prepare.source=toy:200:1")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["splits"]) >= {"validation", "warmstart", "bootstrap"}
