"""bolt_jax.model.artifact: save_model / load_model. Oracles: the saved arrays themselves (numpy), the sharding the
rules table gives each parameter, and the filesystem (an interrupted save leaves no complete-looking directory)."""

from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from bolt_jax import parallel
from bolt_jax.model import artifact, create_model, preset
from bolt_jax.model.llama import pure_dict

CFG = preset("tiny", vocab_size=96, num_hidden_layers=2)


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else k
        out.update(_flat(v, name) if isinstance(v, dict) else {name: v})
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    params = pure_dict(nnx.state(create_model(CFG, mesh, seed=3), nnx.Param))
    tok = root / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"fake": true}')
    path = artifact.save_model(root / "model", params, CFG, tokenizer_dir=tok)
    host = {k: np.asarray(v) for k, v in _flat(params).items()}
    return path, host


def test_layout_and_marker(saved):
    path, _ = saved
    assert sorted(os.listdir(path)) == ["bolt_checkpoint.json", "config.json", "params", "tokenizer"]
    meta = json.load(open(os.path.join(path, "bolt_checkpoint.json")))
    assert meta["format"] == artifact.FORMAT and meta["param_dtype"] == "float32"
    assert json.load(open(os.path.join(path, "config.json")))["intermediate_size"] == CFG.intermediate_size
    assert not os.path.exists(path + ".partial")


def test_load_restores_values_into_rule_shardings_on_another_mesh(saved):
    path, host = saved
    mesh = parallel.make_mesh({"fsdp": 4, "tensor": 2})
    model, cfg, tok_dir = artifact.load_model(path, mesh)
    assert cfg == CFG  # architecture and runtime fields, so the trainer's init_checkpoint check passes
    assert tok_dir == os.path.join(path, "tokenizer") and os.path.isfile(os.path.join(tok_dir, "tokenizer.json"))
    state = nnx.state(model, nnx.Param)
    wanted = parallel.state_specs(state, mesh)
    loaded = _flat(pure_dict(state))
    assert set(loaded) == set(host)
    for key, arr in loaded.items():
        np.testing.assert_array_equal(np.asarray(arr), host[key], err_msg=key)
        assert arr.sharding.mesh == mesh and arr.sharding.spec == wanted[key], key
    assert loaded["embed_tokens"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_load_casts_to_requested_dtype(saved):
    path, host = saved
    model, cfg, _ = artifact.load_model(path, parallel.make_mesh(), dtype="bfloat16", compute_dtype="float32")
    assert cfg.param_dtype == "bfloat16" and cfg.compute_dtype == "float32"
    q = np.asarray(model.layers.self_attn.q_proj.kernel[...])
    assert q.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(q, host["layers/self_attn/q_proj/kernel"].astype(ml_dtypes.bfloat16))


def test_incomplete_or_mismatched_checkpoints_fail_clearly(saved, tmp_path):
    path, _ = saved
    with pytest.raises(artifact.CheckpointError, match="no model checkpoint"):
        artifact.load_model(tmp_path / "absent")
    (tmp_path / "half").mkdir()
    with pytest.raises(artifact.CheckpointError, match="not a complete"):
        artifact.load_model(tmp_path / "half")
    # A config.json that disagrees with the stored arrays: the message names the parameter.
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    hf = json.load(open(bad / "config.json"))
    hf["intermediate_size"] += 8
    json.dump(hf, open(bad / "config.json", "w"))
    with pytest.raises(artifact.CheckpointError, match="layers/mlp/down_proj/kernel"):
        artifact.load_model(bad)


def test_save_rejects_params_that_do_not_match_config(saved, tmp_path):
    _, host = saved
    params = {"embed_tokens": host["embed_tokens"]}
    with pytest.raises(artifact.CheckpointError, match="missing"):
        artifact.save_model(tmp_path / "x", params, CFG)
    assert not os.path.exists(tmp_path / "x")


def test_interrupted_save_leaves_no_checkpoint(saved, tmp_path, monkeypatch):
    path, _ = saved
    model, _, _ = artifact.load_model(path)
    params = pure_dict(nnx.state(model, nnx.Param))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(artifact, "atomic_write_json", boom)  # fails after the params are written
    with pytest.raises(RuntimeError, match="disk full"):
        artifact.save_model(tmp_path / "m", params, CFG)
    assert not os.path.exists(tmp_path / "m")
    assert not artifact.is_complete(tmp_path / "m.partial")
    with pytest.raises(artifact.CheckpointError, match="interrupted"):
        artifact.load_model(tmp_path / "m")
    monkeypatch.undo()
    artifact.save_model(tmp_path / "m", params, CFG)  # a rerun succeeds and clears the leftover
    assert artifact.is_complete(tmp_path / "m") and not os.path.exists(tmp_path / "m.partial")
    with pytest.raises(FileExistsError):
        artifact.save_model(tmp_path / "m", params, CFG)
