"""Two JAX processes on 127.0.0.1 with four simulated devices each, against one process with eight devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import repo_root

ROOT = repo_root()
COMMON = ["--config", "configs/train_synthetic.py", "--config.train.log_every=1", "--config.train.progress_bar=False",
          "--config.model.compute_dtype=float32", "--config.data.seq_len=32", "--config.train.save_every=3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices, **extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_two_processes(args_per_process, timeout=300):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "bolt_jax.main", *args], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(4, BOLT_COORDINATOR=f"127.0.0.1:{port}", BOLT_NUM_PROCESSES=2,
                                       BOLT_PROCESS_ID=i))
             for i, args in enumerate(args_per_process)]
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def run_one_process(args, timeout=300):
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", *args], cwd=ROOT, env=_env(8), text=True,
                       capture_output=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def losses(run_dir):
    out = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        m = json.loads(line)
        out[m["step"]] = m["loss"]
    return out


# How a run is launched: (number of processes, the mesh arguments that go with it).
ONE = (1, [])  # one process, eight devices: fsdp=8
TWO = (2, ["--config.mesh.data=2"])  # two processes of four devices: data=2 x fsdp=4
TWO_TENSOR = (2, ["--config.mesh.tensor=2"])  # two processes of four devices: fsdp=4 x tensor=2


def launch(processes, args):
    """Runs the trainer with `args` on one process (eight devices) or two (four each), all of which must succeed;
    returns the processes' stdout."""
    if processes == 1:
        results = [run_one_process(args)]
    else:
        results = run_two_processes([args, args])
    for rc, _out, err in results:
        assert rc == 0, err[-3000:]
    return [out for _rc, out, _err in results]


def reference_losses(args, run_dir):
    """The losses of one process, eight devices, six steps straight."""
    launch(1, args + [f"--config.run_dir={run_dir}", "--config.train.steps=6"])
    return losses(run_dir)


def assert_resumes_like_reference(args, run_dir, first, then, reference, compared=(4, 5, 6), at_cut=None):
    """Trains to step 3 (a checkpoint: save_every=3) launched as `first`, then to step 6 launched as `then`, which
    must resume from step 3 (process 0 says so); the losses of the steps `compared` are those of `reference`.
    `at_cut(run_dir)` checks the checkpoint between the two launches."""
    launch(first[0], args + [f"--config.run_dir={run_dir}", "--config.train.steps=3", *first[1]])
    if at_cut is not None:
        at_cut(run_dir)
    out = launch(then[0], args + [f"--config.run_dir={run_dir}", "--config.train.steps=6", *then[1]])
    assert "resumed from 3" in out[0], out[0][-3000:]
    got = losses(run_dir)
    np.testing.assert_allclose([got[s] for s in compared], [reference[s] for s in compared], rtol=2e-5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, eight devices, six steps straight."""
    return reference_losses(COMMON, tmp_path_factory.mktemp("one"))


def test_two_processes_train_like_one(tmp_path, reference):
    run_dir = tmp_path / "two"
    outs = launch(2, COMMON + [f"--config.run_dir={run_dir}", "--config.train.steps=6", "--config.mesh.data=2"])
    assert "training summary" in outs[0] and "training summary" not in outs[1]  # process 0 reports
    got = losses(run_dir)
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [reference[s] for s in range(1, 7)], rtol=2e-5)


@pytest.mark.slow  # 42 s; the move itself is covered in-process by tests/test_data_resume.py
def test_checkpoint_moves_between_process_counts(tmp_path, reference):
    """Saved by two processes (mesh data=2 x fsdp=4), resumed by one (fsdp=8), and the other way round."""
    assert_resumes_like_reference(COMMON, tmp_path / "two_then_one", TWO, ONE, reference)
    assert_resumes_like_reference(COMMON, tmp_path / "one_then_two", ONE, TWO_TENSOR, reference)


CORPUS_CONFIG = """# A tiny model trained on a tiny thought-augmented corpus through the real data pipeline.

from bolt_jax.config import base_config, model_config_dict
from bolt_jax.data.pipeline import default_data_config
from bolt_jax.train.loop import default_train_config
from bolt_jax.train.optim import default_optim_config


def get_config():
    c = base_config()
    c.workflow = "train"
    c.model = model_config_dict("tiny")
    c.train = default_train_config()
    c.optim = default_optim_config()
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.data = default_data_config()
    c.data.update(train_path={corpus!r}, tokenizer_path={tokenizer!r}, seq_len=32, shuffle_documents=True)
    return c
"""


@pytest.fixture(scope="module")
def corpus_args(tmp_path_factory):
    """Trainer arguments for a corpus run: JSONL documents with thoughts, a BPE tokenizer of the tiny model's vocab."""
    from bolt_jax.data import toy
    from tests.helpers import build_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    toy.write_corpus(root / "corpus.jsonl", toy.generate(16, seed=5), with_thoughts=True)
    config = root / "train_corpus.py"
    config.write_text(CORPUS_CONFIG.format(corpus=str(root / "corpus.jsonl"), tokenizer=build_tokenizer(root / "tok")))
    return ["--config", str(config), "--config.train.log_every=1", "--config.train.progress_bar=False",
            "--config.model.compute_dtype=float32", "--config.train.save_every=3"]


@pytest.mark.slow
def test_corpus_pipeline_resumes_on_another_process_count(tmp_path, corpus_args):
    """The corpus pipeline's iterator state (one file per process) moves with the model: saved by two processes at
    step 3 and resumed by one, and the other way round, the losses are those of one uninterrupted process."""
    reference = reference_losses(corpus_args, tmp_path / "one")

    def one_state_per_process(run_dir):
        saved = sorted(f for f in os.listdir(run_dir / "checkpoints" / "3" / "data") if f.endswith(".json"))
        assert saved == ["process_0-of-2.json", "process_1-of-2.json"]  # one iterator state per process (Grain)

    assert_resumes_like_reference(corpus_args, tmp_path / "two_then_one", TWO, ONE, reference,
                                  compared=range(1, 7), at_cut=one_state_per_process)
    assert_resumes_like_reference(corpus_args, tmp_path / "one_then_two", ONE, TWO, reference)


def test_processes_with_different_configs_fail_clearly(tmp_path):
    base = COMMON + [f"--config.run_dir={tmp_path}", "--config.train.steps=2", "--dry_run"]
    results = run_two_processes([base + ["--config.seed=1"], base + ["--config.seed=2"]])
    for rc, _out, err in results:
        assert rc == 2
        assert "run a different config than process 0" in err, err[-2000:]


def test_unreachable_coordinator_fails_within_timeout(tmp_path):
    port = _free_port()
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", *COMMON, "--dry_run",
                        "--config.distributed.initialization_timeout_s=5"], cwd=ROOT, text=True, capture_output=True,
                       env=_env(4, BOLT_COORDINATOR=f"127.0.0.1:{port}", BOLT_NUM_PROCESSES=2, BOLT_PROCESS_ID=1),
                       timeout=120)
    assert r.returncode == 2
    assert "could not join the JAX processes at 127.0.0.1" in r.stderr, r.stderr[-2000:]


def test_incomplete_settings_fail_clearly():
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", *COMMON, "--dry_run"], cwd=ROOT, text=True,
                       capture_output=True, env=_env(4, BOLT_COORDINATOR="127.0.0.1:1234"), timeout=120)
    assert r.returncode == 2 and "missing ['num_processes', 'process_id']" in r.stderr, r.stderr[-2000:]


def test_estep_in_two_processes_merges_to_the_same_dataset(tmp_path):
    from bolt_jax.data import toy
    from convert.hf_to_orbax import convert_hf_to_orbax
    from tests.helpers import build_hf_model
    hf_dir = build_hf_model(tmp_path / "hf")
    convert_hf_to_orbax(hf_dir, str(tmp_path / "ckpt"))
    toy.write_corpus(tmp_path / "corpus.jsonl", toy.generate(4, seed=5))
    common = ["--config", "configs/demo.py", "--config.workflow=estep", "--config.model.compute_dtype=float32",
              f"--config.estep.checkpoint={tmp_path / 'ckpt'}",
              f"--config.estep.corpus_path={tmp_path / 'corpus.jsonl'}",
              "--config.estep.max_new_tokens=5", "--config.estep.chunks_per_batch=4", "--config.estep.num_samples=2"]
    one = common + [f"--config.run_dir={tmp_path / 'one'}", f"--config.estep.output_path={tmp_path / 'one.jsonl'}"]
    launch(1, one)
    two = common + [f"--config.run_dir={tmp_path / 'two'}", f"--config.estep.output_path={tmp_path / 'two.jsonl'}",
                    "--config.mesh.data=2"]
    launch(2, two)
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "two.jsonl").read_text()
