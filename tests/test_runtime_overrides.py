"""Every workflow that loads a model checkpoint runs it with the run's own runtime settings (config.model's
attention_impl, compute_dtype, remat_policy, scan_layers: `bolt_jax.config.RUNTIME_OVERRIDES`), not with the ones
stored by whoever wrote the checkpoint; and a misspelt setting is refused when the config is built."""

from __future__ import annotations

import pytest
from flax import nnx

from bolt_jax import parallel
from bolt_jax.config import RUNTIME_OVERRIDES, base_config, model_config_dict
from bolt_jax.model import artifact, create_model
from bolt_jax.model.config import LlamaConfig
from bolt_jax.model.llama import pure_dict

STORED = {"compute_dtype": "bfloat16", "remat_policy": "none", "attention_impl": "auto", "decode_impl": "auto",
          "scan_layers": False}
WANTED = {"compute_dtype": "float32", "remat_policy": "full", "attention_impl": "xla", "decode_impl": "xla",
          "scan_layers": True}
ARCH = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}


class _Loaded(Exception):
    """Raised by the spy once the workflow has loaded its model: the test needs nothing after that."""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from tests.helpers import build_tokenizer
    root = tmp_path_factory.mktemp("overrides")
    cfg = LlamaConfig(**ARCH, **STORED)
    mesh = parallel.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
    params = pure_dict(nnx.state(create_model(cfg, mesh, seed=0), nnx.Param))
    tok = build_tokenizer(root / "tok", vocab_size=124)
    return artifact.save_model(root / "model", params, cfg, tokenizer_dir=tok)


@pytest.fixture
def loaded(monkeypatch) -> list[LlamaConfig]:
    """The config of every model a workflow loads (the real loader runs; the workflow stops right after)."""
    seen: list[LlamaConfig] = []
    real = artifact.load_model

    def spy(*args, **kwargs):
        model, cfg, tok_dir = real(*args, **kwargs)
        seen.append(model.config)
        raise _Loaded

    monkeypatch.setattr(artifact, "load_model", spy)
    return seen


def _config(tmp_path, checkpoint: str):
    from bolt_jax.data.pipeline import default_data_config
    from bolt_jax.estep.run import default_estep_config
    from bolt_jax.eval.run import default_eval_config
    from bolt_jax.sampling.cli import default_generate_config
    from bolt_jax.train.loop import default_train_config
    from bolt_jax.train.optim import default_optim_config
    from bolt_jax.workflows.bootstrap import default_bootstrap_config
    from bolt_jax.workflows.finetune import default_finetune_config
    c = base_config()
    c.run_dir = str(tmp_path / "run")
    c.model = model_config_dict("tiny", **ARCH, **WANTED)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.estep = default_estep_config()
    c.estep.checkpoint = checkpoint
    c.eval = default_eval_config()
    c.eval.checkpoint = checkpoint
    c.generate = default_generate_config()
    c.generate.update(checkpoint=checkpoint, prompts="one two")
    c.finetune = default_finetune_config()
    c.bootstrap = default_bootstrap_config()
    c.train, c.optim, c.data = default_train_config(), default_optim_config(), default_data_config()
    return c


def _assert_overridden(seen: list[LlamaConfig]) -> None:
    """The run's runtime settings, and the parameters in its compute dtype (the checkpoint stores float32 params;
    every workflow here only samples or scores, so it loads them cast once: `load_model(dtype="compute")`)."""
    assert len(seen) == 1
    assert {k: getattr(seen[0], k) for k in RUNTIME_OVERRIDES} == WANTED
    assert seen[0].param_dtype == WANTED["compute_dtype"]


@pytest.mark.parametrize("sampling_mesh, expected", [
    ({}, {"data": 8, "fsdp": 1, "tensor": 1}),  # the default: data parallel, the weights in full on every device
    ({"data": 2, "fsdp": -1}, {"data": 2, "fsdp": 4, "tensor": 1}),
])
def test_sampling_workflows_load_onto_the_sampling_mesh(tmp_path, checkpoint, monkeypatch, sampling_mesh, expected):
    """The E-step, evaluation and generation sample on `config.sampling_mesh`, not the trainer's `config.mesh`
    (fsdp over all 8 devices here): decoding over fsdp-sharded weights would all-gather them every step."""
    from bolt_jax.estep.backend import JaxBackend
    from bolt_jax.eval.run import run_eval
    from bolt_jax.sampling.cli import run_generate
    meshes = []

    def spy(ckpt, mesh, **kwargs):
        meshes.append(dict(mesh.shape))
        raise _Loaded

    monkeypatch.setattr(artifact, "load_model", spy)
    c = _config(tmp_path, checkpoint)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.sampling_mesh.update(sampling_mesh)
    for run in (JaxBackend.from_config, run_eval, run_generate):
        with pytest.raises(_Loaded):
            run(c)
    assert meshes == [expected] * 3


def test_compute_dtype_params_sample_and_score_bit_identically(checkpoint):
    """Loading an fp32 checkpoint's params in the bf16 compute dtype changes no sampled token, log q or score: the
    model casts every weight to the compute dtype where it uses it. (Why it matters: a decode step then reads half
    the weight bytes.)"""
    import numpy as np

    from bolt_jax.sampling import generate
    from bolt_jax.sampling.scorer import score
    runs = {}
    for dtype in (None, "compute"):
        model, cfg, _ = artifact.load_model(checkpoint, dtype=dtype, compute_dtype="bfloat16", attention_impl="xla",
                                            decode_impl="xla")
        assert cfg.param_dtype == ("float32" if dtype is None else "bfloat16")
        prompts = [[1, 5, 9, 33], [1, 7]]
        r = generate(model, prompts, n=2, max_new_tokens=12, temperature=1.0, seed=3)
        runs[dtype] = (r.tokens, r.token_logq, score(model, [prompts[i // 2] + t for i, t in enumerate(r.tokens)]))
    (tok_a, lq_a, sc_a), (tok_b, lq_b, sc_b) = runs[None], runs["compute"]
    assert tok_a == tok_b
    for x, y in zip(lq_a + sc_a, lq_b + sc_b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_checkpoint_stores_other_settings(checkpoint):
    stored = artifact.read_config(checkpoint)
    assert {k: getattr(stored, k) for k in RUNTIME_OVERRIDES} == STORED


def test_estep_backend(tmp_path, checkpoint, loaded):
    from bolt_jax.estep.backend import JaxBackend
    with pytest.raises(_Loaded):
        JaxBackend.from_config(_config(tmp_path, checkpoint))
    _assert_overridden(loaded)


def test_eval_workflow(tmp_path, checkpoint, loaded):
    from bolt_jax.eval.run import run_eval
    with pytest.raises(_Loaded):
        run_eval(_config(tmp_path, checkpoint))
    _assert_overridden(loaded)


def test_generate_workflow(tmp_path, checkpoint, loaded):
    from bolt_jax.sampling.cli import run_generate
    with pytest.raises(_Loaded):
        run_generate(_config(tmp_path, checkpoint))
    _assert_overridden(loaded)


def test_bootstrap_evaluation_stages(tmp_path, checkpoint, loaded):
    from bolt_jax.data import toy
    from bolt_jax.workflows import bootstrap
    c = _config(tmp_path, checkpoint)
    c.data.validation_path = str(tmp_path / "val.jsonl")
    toy.write_toy_corpus(c.data.validation_path, "raw", 4, 0)
    for stage in (lambda: bootstrap.toy_fewshot_stage(c, checkpoint, latent=True),
                  lambda: bootstrap.nll_stage(c, checkpoint),
                  lambda: bootstrap.toy_posterior_stage(c, "m", checkpoint)):
        with pytest.raises(_Loaded):
            stage()
        _assert_overridden(loaded)
        loaded.clear()


def test_finetune_workflow(tmp_path, checkpoint, loaded, monkeypatch):
    from bolt_jax.train import loop
    from bolt_jax.workflows.finetune import run_finetune_eval
    c = _config(tmp_path, checkpoint)
    c.finetune.update(checkpoint=checkpoint, train_path=str(tmp_path / "t.jsonl"), test_path=str(tmp_path / "t.jsonl"),
                      seeds="1", limit_train=2, limit_test=2)
    (tmp_path / "t.jsonl").write_text('{"question": "one plus one?", "answer": "two #### 2"}\n' * 2)
    # the finetuning itself is the trainer's (tested there); the evaluation then loads the finetuned model
    monkeypatch.setattr(loop, "train", lambda cfg: {"model_dir": checkpoint})
    with pytest.raises(_Loaded):
        run_finetune_eval(c)
    _assert_overridden(loaded)


def test_misspelt_attention_impl_is_refused():
    with pytest.raises(ValueError, match="attention_impl='flashy'"):
        LlamaConfig(attention_impl="flashy")
    from bolt_jax import workflows
    c = base_config()
    c.workflow = "model_summary"
    c.model.attention_impl = "flashy"
    with pytest.raises(ValueError, match="config.model: .*attention_impl"):
        workflows.validate(c, num_devices=8)
