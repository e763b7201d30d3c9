"""Data pipeline throughput on one CPU core: read + format + tokenize + pack, through the real Grain pipeline.

    python bench/data.py                                  # toy corpus with true thoughts, BPE tokenizer trained here
    python bench/data.py --corpus /path/aug.jsonl --tokenizer /path/hf_tokenizer_dir --latent_type random

Prints the device, versions and commit (bench/common.py, as every bench), then packed tokens per second (rows x
seq_len, every row full): min / median / max over `--windows` equal windows of the `--seconds`. The loader must stay
above ~150k tokens/s per core so it never starves a GPU training at ~70k tokens/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # the tokenizers backend: one thread
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def train_bpe(texts, out_dir: str, vocab_size: int) -> str:
    """A byte-level BPE with <unk>/<s>/</s> and the four BoLT tokens, trained on the corpus (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from bolt_jax.data.formats import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    hf.save_pretrained(out_dir)
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="", help="JSONL corpus (default: a generated toy corpus with thoughts)")
    ap.add_argument("--tokenizer", default="", help="HF tokenizer dir (default: BPE trained on the corpus)")
    ap.add_argument("--vocab_size", type=int, default=8000)
    ap.add_argument("--toy_docs", type=int, default=20000)
    ap.add_argument("--latent_type", default="random")
    ap.add_argument("--packing", default="concat", choices=["concat", "document"])
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--windows", type=int, default=5, help="samples: the seconds split into this many windows")
    ap.add_argument("--all_cores", action="store_true", help="do not pin to one core")
    args = ap.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    import grain
    import tokenizers
    from common import Samples, header

    from bolt_jax.data import pipeline, toy
    from bolt_jax.data.formats import raw_text
    from bolt_jax.data.readers import iter_corpus, open_corpus
    from bolt_jax.data.tokenizer import load_tokenizer

    work = tempfile.mkdtemp(prefix="bench_data_")
    corpus_path = args.corpus
    if not corpus_path:
        corpus_path = os.path.join(work, "toy.jsonl")
        toy.write_corpus(corpus_path, toy.generate(args.toy_docs, seed=0), with_thoughts=True)
    tok_dir = args.tokenizer or train_bpe((raw_text(r) for r in iter_corpus(corpus_path)),
                                          os.path.join(work, "tok"), args.vocab_size)
    tokenizer = load_tokenizer(tok_dir)
    corpus = open_corpus(corpus_path)
    ds = pipeline.build_dataset(corpus=corpus, tokenizer=tokenizer, latent_type=args.latent_type,
                                seq_len=args.seq_len, rows=args.rows, seed=0, packing=args.packing,
                                fall_back_to_raw=True)
    it = iter(ds)
    next(it)  # warm-up (first reads, tokenizer caches)
    tokens, batches, rates, elapsed = 0, 0, [], 0.0
    for _ in range(args.windows):
        window_tokens, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds / args.windows:
            b = next(it)
            window_tokens += int((b["segment_ids"] > 0).sum())
            batches += 1
        seconds = time.perf_counter() - start
        rates.append(window_tokens / seconds)
        tokens, elapsed = tokens + window_tokens, elapsed + seconds
    cores = "1 core" if not args.all_cores else f"{len(os.sched_getaffinity(0))} cores"
    print(f"data pipeline: {header()}, grain {grain.__version__}, tokenizers {tokenizers.__version__}, "
          f"{os.cpu_count()} CPUs on the host")
    print(f"corpus {corpus_path} ({len(corpus)} records), latent_type={args.latent_type}, packing={args.packing}, "
          f"vocab {tokenizer.vocab_size}, seq_len {args.seq_len}, rows {args.rows}")
    print(f"{batches} batches, {tokens} tokens in {elapsed:.2f} s on {cores}: {Samples.of(rates).fmt(',.0f')} "
          f"tokens/s (min / median / max of {args.windows} windows)")


if __name__ == "__main__":
    main()
