"""Data pipeline throughput on one CPU core: read + format + tokenize + pack, through the real Grain pipeline.

    python bench/data.py                                  # toy corpus with true thoughts, BPE tokenizer trained here
    python bench/data.py --read_threads 0,4,grain         # reader-thread settings side by side
    python bench/data.py --worker_count 0,2 --all_cores   # packing in worker processes (data.worker_count)
    python bench/data.py --corpus /path/aug.jsonl --tokenizer /path/hf_tokenizer_dir --latent_type random

Prints the device, versions and commit (bench/common.py, as every bench), then per setting, each `--read_threads`
value (`data.read_threads`; `grain` = Grain's own default, 16 threads and 500 documents ahead per row slot, what the
pipeline used before that setting existed) with each `--worker_count` (`data.worker_count` processes): the time from
building the pipeline to its first batch (min / median / max over `--starts` builds) and packed tokens per second
(rows x seq_len, every row full; min / median / max over `--windows` windows of `--seconds` / windows each). The
settings' builds and windows take turns, so each comparison is side by side in one run (a threaded setting's readers
keep filling its buffer during the other settings' windows, which favours it). Writes
bench/results/data-<date>[-<tag>].{json,md}. The loader must stay above ~150k tokens/s per core so it never starves
a GPU training at ~70k tokens/s.
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


def parse_read_threads(text: str) -> list[int | str]:
    """'0,4,grain' -> [0, 4, 'grain']."""
    out: list[int | str] = []
    for item in text.split(","):
        item = item.strip()
        if item != "grain" and not item.isdigit():
            raise SystemExit(f"--read_threads: {item!r} is neither a whole number nor 'grain'")
        out.append(item if item == "grain" else int(item))
    return out


def build(pipeline, grain, setting, **kw):
    """The pipeline at one (read_threads, worker_count) setting; read_threads `grain` restores Grain's default read
    options."""
    threads, workers = setting
    if threads != "grain":
        return pipeline.build_dataset(read_threads=threads, worker_count=workers, **kw)
    original = grain.MapDataset.to_iter_dataset
    grain.MapDataset.to_iter_dataset = lambda self, read_options=None, **k: original(self, grain.ReadOptions(), **k)
    try:
        return pipeline.build_dataset(worker_count=workers, **kw)
    finally:
        grain.MapDataset.to_iter_dataset = original


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
    ap.add_argument("--read_threads", default="0", help="comma-separated data.read_threads values; 'grain' = "
                    "Grain's default read options (16 threads, 500 documents ahead per slot)")
    ap.add_argument("--worker_count", default="0", help="comma-separated data.worker_count values")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per setting")
    ap.add_argument("--windows", type=int, default=5, help="samples: the seconds split into this many windows")
    ap.add_argument("--starts", type=int, default=3, help="samples of the time from building to the first batch")
    ap.add_argument("--all_cores", action="store_true", help="do not pin to one core")
    ap.add_argument("--tag", default="", help="suffix of the results' file names")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    workers = [int(w) if w.strip().isdigit() else ap.error(f"--worker_count: {w!r} is not a whole number")
               for w in args.worker_count.split(",")]
    settings = [(t, w) for t in parse_read_threads(args.read_threads) for w in workers]
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    import grain
    import tokenizers
    from common import Samples, header, write_results

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
    kw = dict(corpus=corpus, tokenizer=tokenizer, latent_type=args.latent_type, seq_len=args.seq_len, rows=args.rows,
              seed=0, packing=args.packing, fall_back_to_raw=True)
    next(iter(build(pipeline, grain, (0, 0), **kw)))  # warm-up (tokenizer caches, imports)
    first: dict = {s: [] for s in settings}
    for _ in range(args.starts):
        for s in settings:
            start = time.perf_counter()
            next(iter(build(pipeline, grain, s, **kw)))
            first[s].append(time.perf_counter() - start)
    its = {s: iter(build(pipeline, grain, s, **kw)) for s in settings}
    for it in its.values():
        next(it)
    rates: dict = {s: [] for s in settings}
    for _ in range(args.windows):
        for s in settings:
            window_tokens, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds / args.windows:
                window_tokens += int((next(its[s])["segment_ids"] > 0).sum())
            rates[s].append(window_tokens / (time.perf_counter() - start))
    cores = "1 core" if not args.all_cores else f"{len(os.sched_getaffinity(0))} cores"
    lines = [f"data pipeline: {header()}, grain {grain.__version__}, tokenizers {tokenizers.__version__}, "
             f"{os.cpu_count()} CPUs on the host, measured on {cores}",
             f"corpus {corpus_path} ({len(corpus)} records), latent_type={args.latent_type}, packing={args.packing}, "
             f"vocab {tokenizer.vocab_size}, seq_len {args.seq_len}, rows {args.rows}",
             "",
             "| read_threads | worker_count | build to first batch, s (min / median / max) | packed tokens/s "
             "(min / median / max) |",
             "|---|---|---|---|"]
    for s in settings:
        lines.append(f"| {s[0]} | {s[1]} | {Samples.of(first[s]).fmt('.3f')} | {Samples.of(rates[s]).fmt(',.0f')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    stem = f"data-{time.strftime('%Y-%m-%d')}" + (f"-{args.tag}" if args.tag else "")
    write_results(os.path.join(args.results, stem), {
        "args": vars(args), "cores": cores, "grain": grain.__version__,
        "rows": [{"read_threads": s[0], "worker_count": s[1], "first_batch_s": Samples.of(first[s]).summary(),
                  "tokens_per_s": Samples.of(rates[s]).summary()} for s in settings]}, text)


if __name__ == "__main__":
    main()
