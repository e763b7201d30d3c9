"""Benchmark: convert a full-size TinyLlama-shaped random checkpoint both ways; wall time and peak RSS.

    python -m convert.benchmark --workdir /tmp/convert_bench [--dtype float32]

Builds a random transformers.LlamaForCausalLM with TinyLlama-1.1B's shapes (vocab 32000, untied) and a
32000-entry tokenizer (nothing is downloaded), then runs `python -m convert hf-to-orbax --add-bolt-tokens` and
`python -m convert orbax-to-hf`, each in a fresh process, and reports each one's wall time and peak RSS
(ru_maxrss of the child) against the model's fp32 size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

TINYLLAMA = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def build_tokenizer(out_dir: str, vocab_size: int) -> None:
    """A word-level tokenizer with exactly `vocab_size` entries (<unk>=0, <s>=1, </s>=2), like Llama-2's 32000."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out_dir)


def build_model(out_dir: str) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**TINYLLAMA))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.save_pretrained(out_dir)
    build_tokenizer(out_dir, TINYLLAMA["vocab_size"])
    return sum(p.numel() for p in model.parameters())


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one conversion in a fresh process; the CLI prints its own ru_maxrss."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    match = re.search(r"peak RSS ([0-9.]+) GiB", proc.stdout)
    if not match:
        raise RuntimeError(f"no peak RSS line in the output of {cmd}: {proc.stdout[-500:]} {proc.stderr[-2000:]}")
    return wall, float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/convert_bench")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype of the Orbax checkpoint (the export keeps it)")
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = parser.parse_args()
    hf, ckpt, out = (os.path.join(args.workdir, d) for d in ("hf", "ckpt", "hf_out"))
    for d in (ckpt, out):
        shutil.rmtree(d, ignore_errors=True)
    if not os.path.isfile(os.path.join(hf, "model.safetensors")):
        subprocess.run([sys.executable, "-c", f"from convert.benchmark import build_model; build_model({hf!r})"],
                       check=True)
    fp32_gib = os.path.getsize(os.path.join(hf, "model.safetensors")) / 2**30
    results: dict = {"model_fp32_GiB": round(fp32_gib, 2)}
    py = [sys.executable, "-m", "convert"]
    for name, cmd in (("hf-to-orbax", py + ["hf-to-orbax", "--hf-dir", hf, "--out", ckpt, "--add-bolt-tokens",
                                             "--dtype", args.dtype]),
                      ("orbax-to-hf", py + ["orbax-to-hf", "--ckpt", ckpt, "--out", out])):
        wall, peak = run(cmd)
        results[name] = {"wall_s": round(wall, 1), "peak_rss_GiB": round(peak, 2),
                         "peak_over_fp32_model": round(peak / fp32_gib, 2)}
        print(name, results[name], flush=True)
    print(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
