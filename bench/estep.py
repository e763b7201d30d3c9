"""E-step throughput at the bootstrap shape, static vs continuous scheduling side by side in one run.

    python bench/estep.py                                  # TinyLlama shapes (random weights), vocab 32004, K=4
    python bench/estep.py --smoke                          # a tiny model on CPU, the same long-tailed workload
    python bench/estep.py --scheduler static,continuous --overlap off,on --repeats 5 --decode_slots 64
    python bench/estep.py --scheduler continuous,shared --overlap auto   # prefix sharing against its absence
    python bench/estep.py --scheduler per_batch,continuous --overlap auto   # one engine stream against one per batch

The workload is the bootstrap's: K=4 posterior samples per chunk, prompts up to 1024 tokens, up to 1024 new tokens,
the TinyLlama vocabulary with the four BoLT tokens (32004), joints scored up to 2048 tokens. Random weights do not
write thoughts of realistic lengths, so the lengths are made long-tailed on purpose: the LM head is zeroed, which
makes every next token equally likely (1 / 32004), and besides <EoL> and EOS, `--extra_stops` word ids also end a
thought (the backend's stop list), so each step ends the thought with probability (2 + extra) / 32004: lengths are
geometric with mean about `--mean_len` (300), capped at `--new` (1024). The transformer body keeps its random weights,
so every step costs what a real model's does.

Each scheduler, with the E-step's scoring overlapped with sampling or not (`estep.overlap`: batch b scored and
written in a worker thread while batch b+1 is sampled), runs the same E-step once to compile every shape, then
`--repeats` times; printed and written to bench/results/estep-<date>-<device>.{json,md}: chunks/s, sampled tokens/s
(min / median / max over the repeats), useful slot occupancy (slot-steps that decoded a live request), and the
seconds of each phase (sampling, building joints, scoring, weighing, writing) as shares of the wall time: with
overlap they add up to more than 100%, the excess being the overlapped time. The merged datasets of all variants
are compared byte for byte. `shared` is the continuous engine with prefix sharing (`estep.prefix_sharing`: the K
thoughts of a chunk read its prompt's KV once per step; `--prompt_entries`, 0 = the engine's default): its datasets
equal the others up to float rounding, so they are compared with every float dropped. `per_batch` is the continuous
engine started afresh for every batch of chunks (the E-step before it streamed its batches through one engine:
each batch's long tail then left the slots idle until the batch was done).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time

import numpy as np
from common import header, run_info, smoke_defaults, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 32004  # TinyLlama's 32000 + the four BoLT tokens


PHASES = ("sample", "joints", "score", "weigh", "write")  # bolt_jax.estep.run's phase clock


class CountingBackend:
    """Wraps the E-step's backend: sampled tokens and the sampler's slot statistics (the E-step's own phase clock
    times the phases)."""

    def __init__(self, inner):
        self.inner = inner
        self.reset()

    def reset(self, streaming: bool = True) -> None:
        """Zero the counts; `streaming=False` hides `sample_stream`, so the E-step calls `sample` once per batch."""
        self.slot_steps = self.useful = 0.0
        self.tokens = 0
        self.sample_stream = self._stream if streaming else None

    def sample(self, prompts, *, n, seeds):
        out = self.inner.sample(prompts, n=n, seeds=seeds)
        self._count_tokens(out)
        self._add(self.inner.last_stats)
        return out

    def _stream(self, batches, *, n):
        for key, out in self.inner.sample_stream(batches, n=n):
            self._count_tokens(out)
            yield key, out
        self._add(self.inner.last_stats)  # the whole stream's statistics, once it is done

    def _count_tokens(self, out) -> None:
        self.tokens += sum(len(x.tokens) + x.done for row in out for x in row)  # the stop token was sampled too

    def _add(self, stats) -> None:
        steps = stats["decode_steps"] * stats["slots"]
        self.slot_steps += steps
        self.useful += stats["slot_occupancy"] * steps

    def score(self, sequences):
        return self.inner.score(sequences)


def word_tokenizer(out_dir: str) -> str:
    """A word-level tokenizer with exactly VOCAB ids: BOS/EOS/UNK, 31,997 words, and the four BoLT tokens last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from bolt_jax.data.formats import SPECIAL_TOKENS
    words = ["<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 3 - len(SPECIAL_TOKENS))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    fast.save_pretrained(out_dir)
    return out_dir


def write_corpus(path: str, docs: int, seed: int) -> None:
    """Documents of three paragraphs of 50-400 random words: posterior prompts (prefix + chunk) up to ~1000 tokens."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(docs):
            paras = [" ".join(f"w{w}" for w in rng.integers(10, 31000, rng.integers(50, 400))) for _ in range(3)]
            f.write(json.dumps({"id": f"d{i}", "text": "\n\n".join(paras)}) + "\n")


def build(a, work: str):
    """The checkpoint (random body, zeroed LM head), the corpus and the E-step config."""
    import jax
    from flax import nnx

    from bolt_jax import parallel
    from bolt_jax.config import base_config
    from bolt_jax.estep.run import default_estep_config
    from bolt_jax.model import artifact, create_model, preset
    from bolt_jax.model.llama import pure_dict
    tok_dir = word_tokenizer(os.path.join(work, "tok"))
    write_corpus(os.path.join(work, "corpus.jsonl"), a.docs, seed=0)
    dtype = "float32" if a.smoke else "bfloat16"
    cfg = preset(a.preset, vocab_size=VOCAB, param_dtype=dtype, compute_dtype=dtype,
                 max_position_embeddings=max(2048, a.prompt_len + a.new))
    mesh = parallel.make_mesh()
    params = pure_dict(nnx.state(create_model(cfg, mesh, seed=0), nnx.Param))
    params["lm_head"]["kernel"] = jax.numpy.zeros_like(params["lm_head"]["kernel"])  # uniform next token
    artifact.save_model(os.path.join(work, "ckpt"), params, cfg, tokenizer_dir=tok_dir)
    c = base_config()
    c.run_dir = work
    c.model.update(compute_dtype=dtype, max_position_embeddings=cfg.max_position_embeddings)
    c.estep = default_estep_config()
    c.estep.update(corpus_path=os.path.join(work, "corpus.jsonl"), checkpoint=os.path.join(work, "ckpt"),
                   num_samples=a.k, max_new_tokens=a.new, max_prompt_len=a.prompt_len, max_tokens=a.prompt_len + a.new,
                   chunks_per_batch=a.chunks_per_batch, split_mode="paragraph", random_chunking=False,
                   units_per_chunk=1, decode_slots=a.decode_slots)
    return c


SCHEDULERS = {"static": {"scheduler": "static"}, "continuous": {"scheduler": "continuous"},
              "per_batch": {"scheduler": "continuous"},  # continuous, but one engine per batch (no stream)
              "shared": {"scheduler": "continuous", "prefix_sharing": True}}


def run_variant(a, c, scheduler: str, overlap: str, backend, tokenizer, model_id) -> dict:
    from bolt_jax.estep.run import run_estep
    rows = []
    for r in range(a.repeats + 1):  # run 0 compiles every shape
        cfg = c.copy_and_resolve_references()
        name = f"{scheduler}_{overlap}_{r}"
        cfg.estep.update(overlap=overlap, run_name=name, output_path=os.path.join(c.run_dir, f"{name}.jsonl"),
                         **SCHEDULERS[scheduler])
        if scheduler == "shared":
            cfg.estep.prompt_entries = a.prompt_entries
        backend.inner.e = cfg.estep
        backend.reset(streaming=scheduler != "per_batch")
        t0 = time.perf_counter()
        result = run_estep(cfg, backend, tokenizer, model_id)
        total = time.perf_counter() - t0
        row = {"seconds": total, "chunks": result["chunks"], "chunks_per_s": result["chunks"] / total,
               "sampled_tokens": backend.tokens, "sampled_tokens_per_s": backend.tokens / total,
               "occupancy": backend.useful / backend.slot_steps if backend.slot_steps else 0.0,
               **{phase: sec / total for phase, sec in result["phase_seconds"].items()},
               "output": cfg.estep.output_path}
        print(f"  {scheduler}, overlap {overlap}, run {r}{' (compile)' if r == 0 else ''}: "
              f"{row['sampled_tokens_per_s']:,.0f} sampled "
              f"tok/s, {row['chunks_per_s']:.2f} chunks/s, occupancy {row['occupancy']:.0%}", flush=True)
        if r:
            rows.append(row)
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    out: dict = {"runs": rows}
    for key in ("chunks_per_s", "sampled_tokens_per_s", "occupancy", *PHASES):
        values = [r[key] for r in rows]
        out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values), "samples": values}
    out["sampled_tokens"] = rows[0]["sampled_tokens"]
    return out


def ratios(results: dict) -> dict:
    """Side-by-side ratios of sampled tokens/s, run i against run i: continuous over static (same overlap setting),
    overlap on over off (same scheduler), and the best variant over the static, unoverlapped baseline."""
    def ratio(x: str, y: str) -> dict | None:
        if x not in results or y not in results:
            return None
        pairs = [p["sampled_tokens_per_s"] / q["sampled_tokens_per_s"]
                 for p, q in zip(results[x]["runs"], results[y]["runs"])]
        return {"min": min(pairs), "median": statistics.median(pairs), "max": max(pairs)}
    overlaps = ("off", "on", "auto")
    out = {f"continuous / static, overlap {o}": ratio(f"continuous, {o}", f"static, {o}") for o in overlaps}
    out.update({f"shared / continuous, overlap {o}": ratio(f"shared, {o}", f"continuous, {o}") for o in overlaps})
    out.update({f"continuous (one stream) / per_batch, overlap {o}": ratio(f"continuous, {o}", f"per_batch, {o}")
                for o in overlaps})
    out.update({f"overlap on / off, {s}": ratio(f"{s}, on", f"{s}, off") for s in SCHEDULERS})
    out["continuous + overlap / static without"] = ratio("continuous, on", "static, off")
    return {k: v for k, v in out.items() if v}


def _without_floats(value):
    if isinstance(value, float):
        return None
    if isinstance(value, dict):
        return {k: _without_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_floats(v) for v in value]
    return value


def identical_outputs(results: dict) -> bool:
    """Every run's merged dataset equals the first's: byte for byte, or, where prefix sharing ran (its log weights
    differ in the last digits), record by record with the floats dropped (the same thoughts chosen)."""
    exact = [open(run["output"], "rb").read() for name, r in results.items() if not name.startswith("shared")
             for run in r["runs"]]
    parsed = [[_without_floats(json.loads(line)) for line in open(run["output"])] for r in results.values()
              for run in r["runs"]]
    return all(o == exact[0] for o in exact) and all(p == parsed[0] for p in parsed)


def markdown(a, results: dict, same: bool | None, ratio: dict) -> str:
    lines = [f"# E-step throughput, {a.preset}, vocab {VOCAB}, K={a.k}, prompts <= {a.prompt_len}, new <= {a.new} "
             f"(geometric lengths, mean ~{a.mean_len})", "", header(), "",
             "min / median / max over the repeats (after one compiling run). Occupancy: share of slot-steps that "
             "decoded a live request. Phases: seconds per phase as a share of E-step wall time (median); with overlap "
             "they sum to more than 100%.", "",
             "| scheduler, overlap | sampled tokens/s | chunks/s | occupancy | " + " | ".join(PHASES) + " | sum |",
             "|---" * (5 + len(PHASES)) + "|"]
    for name, r in results.items():
        def mmm(key, fmt):
            return " / ".join(format(r[key][k], fmt) for k in ("min", "median", "max"))
        lines.append(f"| {name} | {mmm('sampled_tokens_per_s', ',.0f')} | {mmm('chunks_per_s', '.2f')} | "
                     f"{mmm('occupancy', '.0%')} | "
                     + " | ".join(f"{r[p]['median']:.0%}" for p in PHASES)
                     + f" | {sum(r[p]['median'] for p in PHASES):.0%} |")
    for label, q in ratio.items():
        lines += ["", f"{label}, sampled tokens/s (run i against run i): min {q['min']:.2f}x, "
                      f"median {q['median']:.2f}x, max {q['max']:.2f}x"]
    if same is not None:
        lines += ["", f"merged datasets identical under every variant: {same} (prefix sharing's: apart from floats)"]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    """This script's arguments (bench/gpu_preflight.py parses the headline's with it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tinyllama_1.1b")
    p.add_argument("--docs", type=int, default=256)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--prompt_len", type=int, default=1024)
    p.add_argument("--new", type=int, default=1024)
    p.add_argument("--mean_len", type=int, default=300)
    p.add_argument("--chunks_per_batch", type=int, default=384)  # 1536 thoughts per sampler call
    p.add_argument("--decode_slots", type=int, default=192)  # each slot serves about 8 thoughts in turn
    p.add_argument("--scheduler", default="static,continuous", help="of static, continuous, shared (continuous with "
                   "prefix sharing)")
    p.add_argument("--prompt_entries", type=int, default=0, help="shared: prompt entries (0 = the engine's default)")
    p.add_argument("--overlap", default="off,on", help="estep.overlap values to run (each with every scheduler)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU: 36 chunks in 3 batches, 16 slots")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--json", default="", help="also write the JSON result to this exact path (bench/headline.py)")
    return p


def main() -> None:
    p = parser()
    a = p.parse_args()
    if a.smoke:
        # three sampler calls, so the overlap of scoring batch b with sampling batch b+1 has something to overlap
        smoke_defaults(a, p, preset="tiny", docs=12, chunks_per_batch=12, decode_slots=16)  # explicit args win

    import jax

    from bolt_jax.estep.backend import JaxBackend
    work = tempfile.mkdtemp(prefix="bench_estep_")
    c = build(a, work)
    backend, tokenizer, model_id = JaxBackend.from_config(c)
    extra = max(0, round(VOCAB / a.mean_len) - 2)
    backend.stop_ids = backend.stop_ids + list(range(1000, 1000 + extra))  # ids of words w997.. (see docstring)
    counting = CountingBackend(backend)
    results = {}
    unknown = set(a.scheduler.split(",")) - set(SCHEDULERS)
    if unknown:
        p.error(f"--scheduler: unknown {sorted(unknown)}; choose from {sorted(SCHEDULERS)}")
    for scheduler in a.scheduler.split(","):
        for overlap in a.overlap.split(","):
            results[f"{scheduler}, {overlap}"] = run_variant(a, c, scheduler, overlap, counting, tokenizer, model_id)
    ratio = ratios(results)
    same = identical_outputs(results) if len(results) > 1 else None
    text = markdown(a, results, same, ratio)
    print("\n" + text)
    device = jax.devices()[0].device_kind.replace(" ", "_").lower()
    stem = os.path.join(a.out, f"estep-{datetime.date.today().isoformat()}-{device}{'-smoke' if a.smoke else ''}")
    os.makedirs(a.out, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump({"args": vars(a), "header": header(), "results": results, "ratios": ratio,
                   "identical_datasets": same}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(f"wrote {stem}.json and .md")
    if a.json:
        write_json(a.json, {**run_info(), "args": vars(a), "smoke": a.smoke, "results": results, "ratios": ratio})


if __name__ == "__main__":
    main()
