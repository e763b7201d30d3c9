"""Scoring benchmark: teacher-forced log-probs through `bolt_jax.sampling.score`, the E-step's scorer.

    python bench/score.py                   # TinyLlama with the BoLT vocab (32004), bf16, 64 sequences of 2048 tokens
    python bench/score.py --min_len 256     # ragged sequences of 256-2048 tokens, packed first fit into 2048-rows
    python bench/score.py --smoke           # a tiny model on CPU, still with the 32004-entry vocabulary

The E-step scores every sampled joint (prompt + thought + chunk, up to 2048 tokens) under the model: one forward
pass and a chunked log-softmax over the 32004-entry vocabulary per token. Tokens/s counts the tokens of the
sequences (not the padding of a row), per `score` call as the E-step makes it: host packing, the device pass and
the copy of the log-probs back. min / median / max over `--runs` calls after a compiling one; device, jax, commit.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import Samples, header, run_info, smoke_defaults, time_samples, write_json


def make_sequences(vocab: int, count: int, longest: int, shortest: int, seed: int = 0) -> list[list[int]]:
    """Random token ids; lengths uniform in [shortest, longest] (all `longest` when equal)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(shortest, longest + 1, count) if shortest < longest else [longest] * count
    return [rng.integers(3, vocab, n).tolist() for n in lengths]


def bench(a) -> dict:
    """Times `score` on the same sequences `runs` times; tokens/s of each call."""
    from bolt_jax import parallel
    from bolt_jax.model import create_model, preset
    from bolt_jax.sampling import score

    cfg = preset(a.preset, param_dtype="bfloat16", compute_dtype="bfloat16",
                 max_position_embeddings=max(a.seq, 2048), **({"vocab_size": a.vocab} if a.vocab else {}))
    mesh = parallel.make_mesh()
    model = create_model(cfg, mesh, seed=0)
    seqs = make_sequences(cfg.vocab_size, a.sequences, a.seq, a.min_len or a.seq)
    tokens = sum(len(s) for s in seqs)
    kw = dict(mesh=mesh, row_len=a.seq, max_rows_per_call=a.rows_per_call)
    seconds = time_samples(lambda: score(model, seqs, **kw), runs=a.runs, warmup=1)
    return {"preset": a.preset, "vocab": cfg.vocab_size, "row_len": a.seq, "sequences": len(seqs),
            "tokens": tokens, "seconds": seconds.summary(),
            "tokens_per_s": seconds.map(lambda t: tokens / t).summary()}


def parser() -> argparse.ArgumentParser:
    """This script's arguments (bench/gpu_preflight.py parses the headline's with it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tinyllama_1.1b_bolt")
    p.add_argument("--vocab", type=int, default=0, help="vocabulary size (0: the preset's)")
    p.add_argument("--seq", type=int, default=2048, help="row length (and the longest sequence)")
    p.add_argument("--min_len", type=int, default=0, help="ragged: lengths uniform in [this, --seq] (0: all --seq)")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--rows_per_call", type=int, default=64, help="rows per device pass (score's max_rows_per_call)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (explicit arguments win)")
    p.add_argument("--json", default="", help="write the figures, with every sample, to this JSON file")
    return p


def main() -> None:
    p = parser()
    a = p.parse_args()
    if a.smoke:
        smoke_defaults(a, p, preset="tiny", vocab=32004, seq=128, sequences=8)  # the BoLT vocab's log-softmax
    r = bench(a)
    tps = Samples.of(r["tokens_per_s"]["samples"])
    print(f"\nscoring: {a.preset} bf16, vocab {r['vocab']}, {r['sequences']} sequences ({r['tokens']:,} tokens) in "
          f"rows of {a.seq}, {header()}; min / median / max of {a.runs} calls"
          + ("; SMOKE: CPU figures, meaningless" if a.smoke else ""))
    print(f"seconds per call {Samples.of(r['seconds']['samples']).fmt('.3g')}; tokens/s {tps.fmt(',.0f')}")
    if a.json:
        write_json(a.json, {**run_info(), "args": vars(a), "smoke": a.smoke, **r})


if __name__ == "__main__":
    main()
