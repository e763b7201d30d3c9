"""python -m convert: Hugging Face <-> bolt_jax checkpoints. Oracles: the PyTorch LlamaForCausalLM (logits, loading,
generate), the HF safetensors bytes themselves (bit-exact round trip), the spec's row recipe written out in numpy
(N(0, hidden^-0.5) clipped at 3 std), literal token strings, and the filesystem after a SIGKILL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from bolt_jax import parallel
from bolt_jax.model import artifact
from convert import __main__ as cli
from convert.hf_to_orbax import UnsupportedConfigError, convert_hf_to_orbax
from convert.hf_weights import WeightsError, open_hf_weights
from convert.orbax_to_hf import MARKER, convert_orbax_to_hf
from tests.helpers import BOLT_TOKENS, build_hf_model, build_tokenizer, hf_logits, repo_root

VOCAB = 512


def _tokens(n=2, s=12, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, s)).astype(np.int32)


def _read_all(hf_dir):
    """Every tensor of a HF dir as numpy (bf16 kept), read independently of our reader through torch."""
    from safetensors.torch import load_file as torch_load
    out = {}
    for name in os.listdir(hf_dir):
        if name.endswith(".safetensors"):
            for k, t in torch_load(os.path.join(hf_dir, name)).items():
                out[k] = (t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16
                          else t.numpy())
    return out


def _torch_model(hf_dir):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def converted(request, tmp_path_factory, mesh):
    """(hf_dir, ckpt_dir, exported hf_dir): HF -> Orbax -> HF in fp32."""
    tie = request.param
    root = tmp_path_factory.mktemp("tied" if tie else "untied")
    hf = build_hf_model(root / "hf", tie=tie, seed=1 if tie else 0)
    ckpt = convert_hf_to_orbax(hf, str(root / "ckpt"), mesh=mesh)
    out = convert_orbax_to_hf(ckpt, str(root / "hf_out"), mesh=parallel.make_mesh({"fsdp": 8}))
    return hf, ckpt, out


# ------------------------------------------------------------------------------------------------ parity, round trip
def test_our_logits_after_conversion_match_torch(converted, mesh):
    hf, ckpt, _ = converted
    tokens = _tokens()
    model, cfg, tok_dir = artifact.load_model(ckpt, mesh, compute_dtype="float32")
    assert cfg.tie_word_embeddings == json.load(open(os.path.join(hf, "config.json")))["tie_word_embeddings"]
    assert tok_dir is not None
    ours = np.asarray(model(tokens))
    ref = hf_logits(hf, tokens)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_round_trip_is_bit_exact_and_loads_in_transformers(converted):
    hf, _, out = converted
    src, dst = _read_all(hf), _read_all(out)
    assert set(src) == set(dst)
    for name in src:
        assert src[name].dtype == dst[name].dtype == np.float32, name
        np.testing.assert_array_equal(src[name], dst[name], err_msg=name)
    tokens = torch.tensor(_tokens(seed=1))
    with torch.no_grad():
        a, b = _torch_model(hf)(tokens).logits, _torch_model(out)(tokens).logits
    assert torch.equal(a, b)
    gen = json.load(open(os.path.join(out, "generation_config.json")))
    assert (gen["do_sample"], gen["temperature"], gen["top_p"]) == (True, 0.6, 0.9)
    assert json.load(open(os.path.join(out, "config.json")))["rope_parameters"]["rope_theta"] == 10000.0


def test_rerun_is_a_noop(converted):
    hf, ckpt, out = converted
    marks = [os.stat(os.path.join(ckpt, artifact.MARKER)).st_mtime_ns, os.stat(os.path.join(out, MARKER)).st_mtime_ns]
    assert convert_hf_to_orbax(hf, ckpt) == ckpt
    assert convert_orbax_to_hf(ckpt, out) == out
    assert marks == [os.stat(os.path.join(ckpt, artifact.MARKER)).st_mtime_ns,
                     os.stat(os.path.join(out, MARKER)).st_mtime_ns]


def test_sharded_bf16_and_bin_inputs(tmp_path, mesh):
    """Sharded safetensors (index.json), bf16 weights, and a legacy pytorch_model.bin all read the same tensors."""
    from transformers import LlamaForCausalLM
    hf = build_hf_model(tmp_path / "hf", dtype="bfloat16", seed=2)
    single = _read_all(hf)
    model = LlamaForCausalLM.from_pretrained(hf, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert os.path.isfile(tmp_path / "sharded" / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors")]) > 2
    (tmp_path / "bin").mkdir()
    shutil.copy(hf + "/config.json", tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    for d in (tmp_path / "sharded", tmp_path / "bin"):
        src = open_hf_weights(str(d))
        for name, ref in single.items():
            got = src.read(name)
            assert got.dtype == ml_dtypes.bfloat16, name
            np.testing.assert_array_equal(got, ref, err_msg=f"{d.name}: {name}")
        src.close()
    # bf16 in -> fp32 checkpoint (exact upcast) -> bf16 out: bit-exact against the bf16 source.
    ckpt = convert_hf_to_orbax(str(tmp_path / "sharded"), str(tmp_path / "ckpt"), mesh=mesh)
    out = convert_orbax_to_hf(ckpt, str(tmp_path / "out"), dtype="bfloat16")
    back = _read_all(out)
    assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"
    for name, ref in single.items():
        assert back[name].dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(back[name], ref, err_msg=name)


def test_bin_without_torch_says_how_to_fix(tmp_path, monkeypatch):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(WeightsError, match="needs torch"):
        open_hf_weights(str(tmp_path))


# ------------------------------------------------------------------------------------------------ BoLT tokens
@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def bolt(request, tmp_path_factory, mesh):
    tie = request.param
    root = tmp_path_factory.mktemp("bolt_tied" if tie else "bolt_untied")
    hf = build_hf_model(root / "hf", tie=tie, hidden=128, heads=4, kv_heads=2, intermediate=256, tokenizer=False)
    build_tokenizer(hf, vocab_size=VOCAB, add_bolt_tokens=False)
    ckpt = convert_hf_to_orbax(hf, str(root / "ckpt"), add_bolt_tokens=True, mesh=mesh)
    out = convert_orbax_to_hf(ckpt, str(root / "hf_out"))
    return hf, ckpt, out, tie


def test_bolt_tokens_appended_and_rows_drawn_as_spec(bolt):
    hf, _, out, tie = bolt
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == VOCAB + 4
    for i, s in enumerate(BOLT_TOKENS):  # spec 1: appended in enum order
        assert tok.encode(s, add_special_tokens=False) == [VOCAB + i]
    assert tok.encode("x <|START_OF_LATENT|> y", add_special_tokens=False).count(VOCAB) == 1
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["vocab_size"] == VOCAB + 4 and cfg["tie_word_embeddings"] == tie
    src, dst = _read_all(hf), _read_all(out)
    assert set(src) == set(dst) == ({"model.embed_tokens.weight"} | ({"lm_head.weight"} if not tie else set())
                                    | {n for n in src if n.startswith("model.layers.") or n == "model.norm.weight"})
    std = 128 ** -0.5
    new = []
    for name in ("model.embed_tokens.weight",) + (() if tie else ("lm_head.weight",)):
        np.testing.assert_array_equal(dst[name][:VOCAB], src[name], err_msg=f"{name}: old rows changed")
        rows = dst[name][VOCAB:]
        assert rows.shape == (4, 128)
        assert np.abs(rows).max() <= 3 * std * (1 + 1e-6)  # clipped at 3 std
        assert abs(rows.mean()) < 4 * std / np.sqrt(rows.size)
        assert 0.85 * std < rows.std() < 1.1 * std  # a 3-std clipped normal has std 0.987 * std
        new.append(rows)
    if not tie:
        assert not np.allclose(new[0], new[1])  # independent draws for embedding and output


def test_bolt_export_generates_in_transformers(bolt):
    _, _, out, _ = bolt
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    model = _torch_model(out)
    prompt = tok("Natalia sold 48 clips <|START_OF_LATENT|><|PRIOR_PREFIX|>", return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**prompt, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 5
    assert model.get_input_embeddings().weight.shape == (VOCAB + 4, 128)


def test_adding_bolt_tokens_twice_is_a_noop(bolt, tmp_path, mesh):
    _, ckpt, out, _ = bolt
    again = convert_hf_to_orbax(out, str(tmp_path / "again"), add_bolt_tokens=True, mesh=mesh)
    assert artifact.read_config(again).vocab_size == VOCAB + 4
    twice = convert_orbax_to_hf(again, str(tmp_path / "again_hf"))
    first, second = _read_all(out), _read_all(twice)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    from transformers import AutoTokenizer
    assert len(AutoTokenizer.from_pretrained(twice)) == VOCAB + 4


# ------------------------------------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    return build_hf_model(tmp_path_factory.mktemp("err") / "hf", num_layers=1, tokenizer=False)


def _variant(small_hf, tmp_path, *, config=None, tensors=None, raw=None):
    d = tmp_path / "variant"
    shutil.copytree(small_hf, d)
    if config is not None:
        cfg = json.load(open(d / "config.json"))
        cfg.update(config)
        json.dump(cfg, open(d / "config.json", "w"))
    if tensors is not None:
        save_file(tensors(load_file(str(d / "model.safetensors"))), str(d / "model.safetensors"),
                  metadata={"format": "pt"})
    if raw is not None:
        data = (d / "model.safetensors").read_bytes()
        (d / "model.safetensors").write_bytes(raw(data))
    return str(d)


@pytest.mark.parametrize("case, match", [
    ("missing", "tensor model.layers.0.mlp.up_proj.weight is missing"),
    ("shape", r"tensor model.layers.0.self_attn.k_proj.weight has shape \(16, 64\), config.json implies \(32, 64\)"),
    ("truncated", "truncated: tensor .* ends at byte"),
    ("rope_scaling", "field rope_scaling=.*linear"),
    ("bias", "field attention_bias=True"),
    ("extra", "tensor model.layers.0.self_attn.q_proj.bias is not part of"),
])
def test_bad_inputs_fail_naming_the_tensor_or_field(small_hf, tmp_path, case, match):
    kw = {
        "missing": dict(tensors=lambda t: {k: v for k, v in t.items() if k != "model.layers.0.mlp.up_proj.weight"}),
        "shape": dict(tensors=lambda t: {k: (v[:16] if k == "model.layers.0.self_attn.k_proj.weight" else v)
                                         for k, v in t.items()}),
        "truncated": dict(raw=lambda b: b[:-100]),
        "rope_scaling": dict(config={"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
        "bias": dict(config={"attention_bias": True}),
        "extra": dict(tensors=lambda t: {**t, "model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}),
    }[case]
    hf = _variant(small_hf, tmp_path, **kw)
    with pytest.raises((WeightsError, UnsupportedConfigError), match=match):
        convert_hf_to_orbax(hf, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def _summary(command: str, ref: dict, itemsize: int, out) -> str:
    """The command's last line as a regex: every tensor of the source, its bytes at `itemsize`, the output's path."""
    from convert.progress import format_bytes
    nbytes = sum(a.size for a in ref.values()) * itemsize
    return (rf"{command}: converted {len(ref)} tensors \({re.escape(format_bytes(nbytes))}\) in \d+\.\d s -> "
            rf"{re.escape(os.path.abspath(out))} \(peak RSS")


def test_cli_reports_errors_and_converts(small_hf, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BOLT_PROGRESS", "plain")  # progress as log lines on stderr, as under SLURM
    ref = load_file(os.path.join(small_hf, "model.safetensors"))
    assert cli.main(["hf-to-orbax", "--hf-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert cli.main(["hf-to-orbax", "--hf-dir", small_hf, "--out", str(tmp_path / "ck"), "--mesh", "fsdp=-1",
                     "--dtype", "bfloat16"]) == 0
    assert artifact.read_config(tmp_path / "ck").param_dtype == "bfloat16"
    out, err = capsys.readouterr()
    assert re.fullmatch(_summary("hf-to-orbax", ref, 2, tmp_path / "ck") + r".*\n", out), out
    assert f"hf-to-orbax {len(ref)}/{len(ref)} (100%)" in err and "tensor/s" in err
    assert cli.main(["orbax-to-hf", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")]) == 0
    out, err = capsys.readouterr()
    assert re.fullmatch(_summary("orbax-to-hf", ref, 2, tmp_path / "hf") + r".*\n", out), out
    assert f"orbax-to-hf {len(ref)}/{len(ref)} (100%)" in err
    assert cli.main(["orbax-to-hf", "--ckpt", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")]) == 0
    assert f"nothing to convert: {os.path.abspath(tmp_path / 'hf')} is already complete" in capsys.readouterr().out
    got = _read_all(tmp_path / "hf")
    for name, arr in ref.items():
        np.testing.assert_array_equal(got[name], arr.astype(ml_dtypes.bfloat16), err_msg=name)


def test_help_explains_both_commands():
    r = subprocess.run([sys.executable, "-m", "convert", "--help"], capture_output=True, text=True,
                       cwd=repo_root(), timeout=60)
    assert (r.returncode == 0 and "hf-to-orbax" in r.stdout and "orbax-to-hf" in r.stdout
            and "--add-bolt-tokens" in r.stdout)


# ------------------------------------------------------------------------------------------------ interruption
KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import bolt_jax.model.artifact as ck, convert.orbax_to_hf as o2h
    from convert.hf_to_orbax import convert_hf_to_orbax
    hf, ckpt, out, which = sys.argv[1:]
    if which == "hf-to-orbax":   # killed when the params are on disk, just before the completion marker
        ck.atomic_write_json = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        convert_hf_to_orbax(hf, ckpt)
    else:                        # killed after a few tensors of model.safetensors were written
        def killing(cfg, params, orig=o2h.hf_from_params):
            for i, item in enumerate(orig(cfg, params)):
                if i == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield item
        o2h.hf_from_params = killing
        o2h.convert_orbax_to_hf(ckpt, out)
""")


def test_sigkill_mid_conversion_leaves_no_complete_looking_dir(small_hf, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "hf_out")
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, small_hf, ckpt, out, "hf-to-orbax"], env=env,
                       cwd=repo_root(), capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    assert not os.path.exists(ckpt) and os.path.isdir(ckpt + ".partial")
    assert not artifact.is_complete(ckpt + ".partial")
    with pytest.raises(artifact.CheckpointError, match="interrupted"):
        artifact.load_model(ckpt)
    convert_hf_to_orbax(small_hf, ckpt)  # the rerun finishes and clears the leftover
    assert artifact.is_complete(ckpt) and not os.path.exists(ckpt + ".partial")

    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, small_hf, ckpt, out, "orbax-to-hf"], env=env,
                       cwd=repo_root(), capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr[-2000:]
    assert not os.path.exists(out)
    assert not os.path.exists(os.path.join(out + ".partial", MARKER))
    assert not os.path.exists(os.path.join(out + ".partial", "model.safetensors"))  # only the .tmp was begun
    convert_orbax_to_hf(ckpt, out)
    assert os.path.isfile(os.path.join(out, MARKER)) and not os.path.exists(out + ".partial")
    _torch_model(out)


# ------------------------------------------------------------------------------------------------ multi-process
MULTIHOST_SCRIPT = textwrap.dedent("""
    import os, sys
    pid, port, hf, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=60)
    from bolt_jax import parallel
    from convert.hf_to_orbax import convert_hf_to_orbax
    from convert.orbax_to_hf import convert_orbax_to_hf
    mesh = parallel.make_mesh({"fsdp": 2, "tensor": 2})   # each parameter split across both processes
    convert_hf_to_orbax(hf, out + "/ckpt", add_bolt_tokens=True, mesh=mesh)
    convert_orbax_to_hf(out + "/ckpt", out + "/hf", mesh=mesh)
    jax.distributed.shutdown()
""")


def test_two_processes_convert_both_ways(bolt, tmp_path):
    """Two JAX processes (2 CPU devices each): same files as the single-process conversion of the same model."""
    import socket
    hf, _, single_out, _ = bolt
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, PYTHONPATH=str(repo_root()), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-c", MULTIHOST_SCRIPT, str(i), port, hf, str(tmp_path)], env=env,
                              cwd=repo_root(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    single, multi = _read_all(single_out), _read_all(tmp_path / "hf")
    assert set(single) == set(multi)
    for name in single:
        np.testing.assert_array_equal(single[name], multi[name], err_msg=name)
