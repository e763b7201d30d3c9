"""E-step throughput: chunks/s and sampled tokens/s with K samples, and where the time goes (sampling, scoring, host).

    python bench/estep.py                       # TinyLlama shapes (random weights), K=4, toy corpus, 256 new tokens
    python bench/estep.py --smoke               # tiny model on CPU

Random weights rarely emit <EoL>, so most thoughts run to max_new_tokens: a worst case for sampling time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import header


class TimedBackend:
    def __init__(self, inner):
        self.inner, self.sample_s, self.score_s = inner, 0.0, 0.0

    def sample(self, prompts, *, n, seeds):
        t0 = time.perf_counter()
        out = self.inner.sample(prompts, n=n, seeds=seeds)
        self.sample_s += time.perf_counter() - t0
        return out

    def score(self, sequences):
        t0 = time.perf_counter()
        out = self.inner.score(sequences)
        self.score_s += time.perf_counter() - t0
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tinyllama_1.1b")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--chunks_per_batch", type=int, default=64)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args()
    if a.smoke:
        a.preset, a.docs, a.new, a.chunks_per_batch = "tiny", 8, 16, 16

    from flax import nnx

    from bolt_jax import parallel
    from bolt_jax.config import base_config
    from bolt_jax.data import toy
    from bolt_jax.data.bpe import train_bpe_tokenizer
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.estep.backend import JaxBackend
    from bolt_jax.estep.run import default_estep_config, run_estep
    from bolt_jax.model import artifact as model_ckpt
    from bolt_jax.model import create_model, preset
    from bolt_jax.model.llama import pure_dict

    work = tempfile.mkdtemp(prefix="bench_estep_")
    docs = toy.generate(a.docs, seed=0)
    toy.write_corpus(os.path.join(work, "corpus.jsonl"), docs)
    tok_dir = train_bpe_tokenizer([d.text for d in toy.generate(500, seed=1)], os.path.join(work, "tok"), 1024)
    tok = load_tokenizer(tok_dir)
    cfg = preset(a.preset, vocab_size=tok.vocab_size, param_dtype="bfloat16", compute_dtype="bfloat16")
    mesh = parallel.make_mesh()
    model = create_model(cfg, mesh, seed=0)
    model_ckpt.save_model(os.path.join(work, "ckpt"), pure_dict(nnx.state(model, nnx.Param)), cfg,
                          tokenizer_dir=tok_dir)
    c = base_config()
    c.run_dir = work
    c.model.compute_dtype = "bfloat16"
    c.estep = default_estep_config()
    c.estep.update(corpus_path=os.path.join(work, "corpus.jsonl"), checkpoint=os.path.join(work, "ckpt"),
                   num_samples=a.k, max_new_tokens=a.new, chunks_per_batch=a.chunks_per_batch,
                   split_mode="paragraph", random_chunking=False, units_per_chunk=1)
    backend, tokenizer, model_id = JaxBackend.from_config(c)
    timed = TimedBackend(backend)
    warm = c.copy_and_resolve_references()
    warm.estep.run_name = "warmup"
    run_estep(warm, timed, tokenizer, model_id)  # the same corpus once: every batch and prompt-length shape compiles
    timed.sample_s = timed.score_s = 0.0
    t0 = time.perf_counter()
    result = run_estep(c, timed, tokenizer, model_id)
    total = time.perf_counter() - t0
    host = total - timed.sample_s - timed.score_s
    print(f"\nE-step: {a.preset} bf16, K={a.k}, max_new {a.new}, {result['chunks']} chunks, "
          f"{header()}; steady state (a first pass over the same corpus compiled every shape)")
    print(f"{'chunks/s':>9} {'sampled tok/s':>14} {'sampling':>9} {'scoring':>8} {'host':>6}")
    print(f"{result['chunks'] / total:9.2f} {result['sampled_tokens_per_s']:14,.0f} {timed.sample_s / total:9.0%} "
          f"{timed.score_s / total:8.0%} {host / total:6.0%}")


if __name__ == "__main__":
    main()
