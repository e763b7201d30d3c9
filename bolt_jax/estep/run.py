"""The E-step driver: for every chunk of a fixed corpus, sample K thoughts from the model's posterior, score them
under the joint, resample one, and write the augmented dataset.

    results = run_estep(config)            # config.estep = default_estep_config() (+ overrides)

Work is cut into batches of chunks in a fixed order; each finished batch is one atomic shard of the result store,
so a killed run restarts where it stopped. `estep.slice="i:n"` runs slice i of n (documents split into n
contiguous ranges) for job arrays; `merge_estep` joins the slices into the dataset once all are done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ml_collections
import numpy as np

from bolt_jax.config import check_choice, check_whole
from bolt_jax.data.chunking import SPLIT_MODES, ChunkingConfig, chunk_text
from bolt_jax.data.formats import raw_text
from bolt_jax.data.schema import augment_record, write_jsonl
from bolt_jax.estep import sequences, weights
from bolt_jax.estep.backend import JaxBackend, ModelBackend
from bolt_jax.estep.store import ResultStore
from bolt_jax.runtime.atomic import atomic_write_text

log = logging.getLogger(__name__)


def default_estep_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "corpus_path": "",  # the fixed corpus (raw records), e.g. the bootstrap split of `prepare`
        "checkpoint": "",  # the model that writes the thoughts (a bolt_jax model checkpoint)
        "tokenizer_path": "",  # "" = the checkpoint's tokenizer
        "output_path": "",  # the augmented dataset (JSONL); its stats go next to it as <name>.stats.json
        "store_dir": "",  # the result store ("" = <run_dir>/estep_store)
        "run_name": "estep",
        "iteration": 1,
        "num_samples": 4,  # K (the released runs); 1 = no resampling
        "resample": True,  # importance resampling (the original's apply_monte_carlo); False: uniform choice
        "elbo_samples": [1, 2, 4],  # ELBO_n for each n <= K, per chunk and per document
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,  # 0 = off
        "max_new_tokens": 1024,
        "max_prompt_len": 1024,  # left truncation of posterior prompts (max_model_len - max_gen_len)
        "max_tokens": 2048,  # joint sequences longer than this are cut (spec 5.3)
        "accounting": "original",  # original: the joint sum skips the <SoL> after the prefix; corrected: includes it
        "seed": 42,
        "chunks_per_batch": 64,  # chunks per sampler call and per result shard
        # the sampler's scheduler (bolt_jax.sampling.schedulers): "continuous" keeps decode_slots rows busy, a
        # finished thought's row taking the next waiting sample; "static" decodes each call as one batch until its
        # longest thought ends. Same samples either way (so not part of the store's settings).
        "scheduler": "continuous",
        "decode_slots": 0,  # continuous: rows decoded together (0 = chunks_per_batch * num_samples / 4, at least 8,
        # per batch device of the sampling mesh)
        # continuous: the num_samples thoughts of a chunk read its prompt's KV once per step from one of
        # prompt_entries shared entries (0 = 2 x decode_slots / num_samples; both rounded up to a multiple of the mesh's
        # batch devices) instead of each slot holding a copy:
        # fewer bytes per decode step (bench/decode_traffic.py); the same samples up to float rounding (not part of
        # the store's settings). Off until its speed-up is measured on a GPU (BENCHMARKS.md).
        "prefix_sharing": False,
        "prompt_entries": 0,
        # "auto"/"on": batch b is scored and written in a worker thread while batch b+1 is sampled, so the device
        # is not idle during host work; "auto" turns it off with several processes ("on" is refused there). Same
        # results either way (not part of the store's settings).
        "overlap": "auto",
        "slice": "0:1",  # i:n -> this job does slice i of n
        "limit_docs": 0,  # >0: only the first N documents (debugging)
        # chunking (spec 2.5, E-step row): Poisson chunks of sentences, prefix = previous 3 chunks
        "split_mode": "sentence",
        "units_per_chunk": 8,
        "min_units_per_chunk": 1,
        "max_units_per_chunk": 20,
        "random_chunking": True,
        "num_prefix_chunks": 3,
        "include_all_prefix": False,
        "chunk_seed": 42,
    })


def validate_estep_config(e: ml_collections.ConfigDict) -> None:
    """The E-step's settings (ValueError naming the key), before a model loads or a program compiles: K and the
    sampling settings by the sampler's own checks, the lengths, ELBO sizes, chunking, seeds and slice. What needs the
    model (lengths against its positions) is checked when it is loaded."""
    from bolt_jax.sampling.sampler import check_sampling_args
    try:
        check_sampling_args(e.num_samples, e.max_new_tokens, (), None, temperature=e.temperature, top_k=e.top_k,
                            top_p=e.top_p)
    except ValueError as err:
        message = str(err)
        raise ValueError("config.estep." + (message.replace("n=", "num_samples=", 1) if message.startswith("n=")
                                            else message)) from None
    for key, low, example in (("chunks_per_batch", 1, 64), ("max_prompt_len", 0, 1024), ("max_tokens", 2, 2048),
                              ("seed", 0, 42), ("iteration", 0, 1), ("chunk_seed", 0, 42),
                              ("num_prefix_chunks", 0, 3), ("limit_docs", 0, 0)):
        check_whole(f"estep.{key}", e[key], low, example)
    bad = [n for n in e.elbo_samples if isinstance(n, bool) or not isinstance(n, int) or n < 1]
    if bad:  # an n above num_samples is skipped, as documented: bootstrap and the K sweep vary K under one list
        raise ValueError(f"config.estep.elbo_samples={list(e.elbo_samples)}: each n must be a whole number >= 1 "
                         f"(ELBO_n over n of the K samples); {bad} is not")
    check_choice("estep.accounting", e.accounting, sequences.ACCOUNTINGS, "original")
    check_choice("estep.split_mode", e.split_mode, SPLIT_MODES, "sentence")
    if e.units_per_chunk is not None:
        check_whole("estep.units_per_chunk", e.units_per_chunk, 1, 8)
        low, avg, cap = e.min_units_per_chunk, e.units_per_chunk, e.max_units_per_chunk
        if e.random_chunking and not (0 < low < avg and cap >= low):  # a cap of 0 would never end a document
            raise ValueError(f"config.estep: random chunking needs 0 < min_units_per_chunk ({low}) < units_per_chunk "
                             f"({avg}) and max_units_per_chunk ({cap}) >= min_units_per_chunk")
    parse_slice(e.slice)


# ------------------------------------------------------------------------------------------------ work items
@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # "<doc index>:<chunk index>"
    doc_index: int
    index: int
    prefix: str
    suffix: str


def chunking_config(e: ml_collections.ConfigDict) -> ChunkingConfig:
    return ChunkingConfig(split_mode=e.split_mode, units_per_chunk=e.units_per_chunk,
                          min_units_per_chunk=e.min_units_per_chunk, max_units_per_chunk=e.max_units_per_chunk,
                          random_chunking=e.random_chunking, num_prefix_chunks=e.num_prefix_chunks,
                          include_all_prefix=e.include_all_prefix, chunk_seed=e.chunk_seed)


def parse_slice(spec: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in str(spec).split(":"))
    except ValueError:
        raise ValueError(f"config.estep.slice={spec!r}: write it as i:n (slice i of n, 0 <= i < n)") from None
    if not 0 <= i < n:
        raise ValueError(f"config.estep.slice={spec!r}: need 0 <= i < n")
    return i, n


def slice_documents(num_docs: int, slice_index: int, num_slices: int) -> range:
    per = math.ceil(num_docs / num_slices)
    return range(min(slice_index * per, num_docs), min((slice_index + 1) * per, num_docs))


def document_chunks(records: Sequence[dict], doc_indices: range, cfg: ChunkingConfig) -> list[Chunk]:
    out = []
    for d in doc_indices:
        for pair in chunk_text(raw_text(records[d]), cfg):
            out.append(Chunk(f"{d}:{pair.index}", d, pair.index, pair.prefix, pair.suffix))
    return out


def resolved_settings(e: ml_collections.ConfigDict, model_id: str) -> dict[str, Any]:
    keys = ["num_samples", "resample", "temperature", "top_p", "top_k", "max_new_tokens", "max_prompt_len",
            "max_tokens", "accounting", "seed", "chunks_per_batch", "split_mode", "units_per_chunk",
            "min_units_per_chunk", "max_units_per_chunk", "random_chunking", "num_prefix_chunks",
            "include_all_prefix", "chunk_seed", "corpus_path", "limit_docs"]
    return {"model": model_id, **{k: e[k] for k in keys}}


# ------------------------------------------------------------------------------------------------ one batch
def chunk_sampling_seed(e: ml_collections.ConfigDict, c: Chunk) -> int:
    """The sampler seed of one chunk: a function of (seed, iteration, document, chunk) only, so the samples do not
    depend on batching, slicing, restarts or the number of processes."""
    return int(np.random.default_rng([e.seed, e.iteration, c.doc_index, c.index]).integers(2**31))


@dataclass
class SampledBatch:
    """A batch's posterior prompts and its K samples per chunk: what sampling hands to scoring."""
    chunks: Sequence[Chunk]
    prompts: list[Any]
    samples: list[list[Any]]


def sample_batch(chunks: Sequence[Chunk], backend: ModelBackend, tokenizer,
                 e: ml_collections.ConfigDict) -> SampledBatch:
    """K posterior samples per chunk (the sampler's device work and its host loop)."""
    prompts = [sequences.posterior_prompt_tokens(tokenizer, c.prefix, c.suffix, e.max_prompt_len) for c in chunks]
    samples = backend.sample([p.tokens for p in prompts], n=e.num_samples,
                             seeds=[chunk_sampling_seed(e, c) for c in chunks])
    return SampledBatch(chunks, prompts, samples)


def sampled_batches(work: Sequence[tuple[int, Sequence[Chunk]]], backend: ModelBackend, tokenizer,
                    e: ml_collections.ConfigDict) -> Iterator[tuple[int, SampledBatch]]:
    """(index, SampledBatch) for each batch of `work`, in order. With the continuous scheduler and a backend that
    streams (`JaxBackend.sample_stream`), one engine samples all of them, the next batch's samples filling the slots
    a batch's long tail leaves idle; otherwise one `sample_batch` per batch. The same samples either way (a chunk's
    randomness is its own seed's)."""
    stream = getattr(backend, "sample_stream", None) if e.get("scheduler", "static") == "continuous" else None
    if stream is None:
        for b, chunks in work:
            yield b, sample_batch(chunks, backend, tokenizer, e)
        return
    taken: dict[int, tuple[Sequence[Chunk], list[Any]]] = {}

    def requests():
        for b, chunks in work:
            prompts = [sequences.posterior_prompt_tokens(tokenizer, c.prefix, c.suffix, e.max_prompt_len)
                       for c in chunks]
            taken[b] = (chunks, prompts)
            yield b, [p.tokens for p in prompts], [chunk_sampling_seed(e, c) for c in chunks]

    for b, samples in stream(requests(), n=e.num_samples):
        chunks, prompts = taken.pop(b)
        yield b, SampledBatch(chunks, prompts, samples)


def score_batch(batch: SampledBatch, backend: ModelBackend, tokenizer, e: ml_collections.ConfigDict,
                phases: PhaseClock | None = None) -> list[dict[str, Any]]:
    """Joints built on the host, scored on the device, then weighed and one chosen per chunk: one row per chunk."""
    phases = phases or PhaseClock()
    with phases("joints"):
        joints, all_seqs = [], []
        for c, chunk_samples in zip(batch.chunks, batch.samples):
            latents = [tokenizer.decode(s.tokens) for s in chunk_samples]
            j = sequences.joint_sequences(tokenizer, c.prefix, latents, c.suffix, e.max_tokens, e.accounting)
            joints.append((latents, j))
            all_seqs.extend(j.sequences)
    with phases("score"):
        scores = backend.score(all_seqs)
    with phases("weigh"):
        return [_result_row(i, c, chunk_samples, prompt, latents, j, scores, tokenizer, e)
                for i, (c, chunk_samples, prompt, (latents, j))
                in enumerate(zip(batch.chunks, batch.samples, batch.prompts, joints))]


def _result_row(i: int, c: Chunk, chunk_samples, prompt, latents, j, scores, tokenizer,
                e: ml_collections.ConfigDict) -> dict[str, Any]:
    k = e.num_samples
    joint_lp = [sequences.span_sum(scores[i * k + s], j.score_from) for s in range(k)]
    gen_lp = [s.logq for s in chunk_samples]
    log_w = weights.log_weights(joint_lp, gen_lp)
    if k == 1:
        chosen = 0
    elif e.resample:
        chosen = weights.resample(log_w, weights.chunk_rng(e.seed, c.doc_index, c.index))
    else:
        chosen = int(weights.chunk_rng(e.seed, c.doc_index, c.index).integers(k))
    row = {
        "chunk_id": c.chunk_id, "doc_index": c.doc_index, "chunk_index": c.index, "suffix": c.suffix,
        "latents": latents, "latent_tokens": [s.tokens for s in chunk_samples], "gen_logprob": gen_lp,
        "joint_logprob": joint_lp, "log_weight": log_w.tolist(),
        "done": [s.done for s in chunk_samples], "gen_len": [len(s.tokens) for s in chunk_samples],
        "chosen": chosen, "prompt_len": len(prompt.tokens), "prompt_truncated": prompt.truncated,
        "num_suffix_token_truncated": j.suffix_truncated, "joint_prefix_truncated": j.prefix_truncated,
        "suffix_tokens": len(tokenizer.encode(c.suffix)),
        **weights.chunk_diagnostics(log_w),
    }
    for n in e.elbo_samples:
        if n <= k:
            row[f"elbo_{n}"] = weights.elbo(log_w, n)
    return row


def process_batch(chunks: Sequence[Chunk], backend: ModelBackend, tokenizer,
                  e: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Sample, score, weigh and choose for a batch of chunks, in turn; returns one result row per chunk."""
    return score_batch(sample_batch(chunks, backend, tokenizer, e), backend, tokenizer, e)


def process_chunks(chunks: Sequence[Chunk], backend: ModelBackend, tokenizer,
                   e: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """`process_batch` over any number of chunks, in batches of `chunks_per_batch` sampled as one stream
    (`sampled_batches`), without a store: one result row per chunk, in order (the toy diagnostics' E-step)."""
    work = [(b, chunks[i:i + e.chunks_per_batch]) for b, i in enumerate(range(0, len(chunks), e.chunks_per_batch))]
    return [row for _, sampled in sampled_batches(work, backend, tokenizer, e)
            for row in score_batch(sampled, backend, tokenizer, e)]


class PhaseClock:
    """Seconds per phase of the E-step (`with clock("score"): ...`), summed over batches. Phases that run in
    different threads add up to more than the wall time when they overlap: the excess is the overlap."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ driver
def run_estep(config: ml_collections.ConfigDict, backend: ModelBackend | None = None, tokenizer=None,
              model_id: str | None = None) -> dict[str, Any]:
    """Runs this job's slice (skipping finished batches), then merges if every slice is done."""
    from bolt_jax.data.readers import open_corpus
    e = config.estep
    slice_index, num_slices = parse_slice(e.slice)
    if backend is None:
        backend, tokenizer, model_id = load_backend(config)
    _check_lengths(backend, e)
    records = open_corpus(e.corpus_path)
    num_docs = len(records) if not e.limit_docs else min(e.limit_docs, len(records))
    store = ResultStore(e.store_dir or os.path.join(config.run_dir, "estep_store"), run=e.run_name,
                        iteration=e.iteration, settings=resolved_settings(e, model_id or "unknown"))
    chunks = document_chunks(records, slice_documents(num_docs, slice_index, num_slices), chunking_config(e))
    batches = [chunks[i:i + e.chunks_per_batch] for i in range(0, len(chunks), e.chunks_per_batch)]
    todo = [b for b in range(len(batches)) if not store.has_batch(slice_index, num_slices, b)]
    overlap = overlap_enabled(e)
    log.info("E-step slice %d/%d: %d documents, %d chunks, %d batches (%d already done) -> %s; scoring %s sampling",
             slice_index, num_slices, num_docs, len(chunks), len(batches), len(batches) - len(todo), store.dir,
             "overlaps" if overlap else "follows")
    clock = PhaseClock()
    t0 = time.perf_counter()
    sampled_tokens = _run_batches([(b, batches[b]) for b in todo], backend, tokenizer, e, clock, overlap,
                                  write=lambda b, rows: store.write_batch(slice_index, num_slices, b, rows),
                                  desc=f"E-step slice {slice_index}")
    elapsed = time.perf_counter() - t0
    done_chunks = sum(len(batches[b]) for b in todo)
    result = {"store": store.dir, "chunks": len(chunks), "chunks_this_run": done_chunks, "seconds": elapsed,
              "chunks_per_s": done_chunks / elapsed if elapsed and done_chunks else 0.0,
              "sampled_tokens_per_s": sampled_tokens / elapsed if elapsed and done_chunks else 0.0,
              "overlap": overlap, "phase_seconds": dict(clock.seconds)}
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("estep_slice_done")
    if e.output_path and all_slices_done(store, records, num_docs, e):
        if jax.process_index() == 0:
            result.update(merge_estep(store, records, num_docs, e))
        else:
            result["output_path"] = e.output_path
    return result


OVERLAP_MODES = ("auto", "on", "off")


def overlap_enabled(e: ml_collections.ConfigDict) -> bool:
    """Whether batch b+1 is sampled while batch b is scored and written (`estep.overlap`). "auto" overlaps with one
    process; with several, every process must issue its device programs in the same order (their collectives
    pair up), which two threads do not guarantee, so "auto" runs the phases in turn and "on" is refused."""
    import jax
    mode = e.get("overlap", "auto")
    if mode not in OVERLAP_MODES:
        raise ValueError(f"config.estep.overlap={mode!r}; choose one of {OVERLAP_MODES}")
    if jax.process_count() > 1:
        if mode == "on":
            raise ValueError(f"config.estep.overlap='on' needs one process ({jax.process_count()} here: two threads "
                             "would issue collectives in different orders); use 'auto' or 'off'")
        return False
    return mode != "off"


def _run_batches(work: list[tuple[int, Sequence[Chunk]]], backend: ModelBackend, tokenizer,
                 e: ml_collections.ConfigDict, clock: PhaseClock, overlap: bool, *, write, desc: str) -> int:
    """Samples, scores and writes every (index, chunks) batch; returns the number of sampled tokens. With `overlap`,
    one worker thread scores and writes batch b while this thread samples batch b+1 (at most one batch in flight;
    the continuous engine also holds the start of the batches after b+1 (`sampled_batches`), so a kill loses at most
    about three batches of work and never a written shard). Every process runs every batch (each holds its share of
    the global batch on the mesh); process 0 writes the shards."""
    import jax

    from bolt_jax.runtime import console
    primary = jax.process_index() == 0
    bar = console.progress(total=sum(len(c) for _, c in work), desc=desc, unit="chunk",
                           enabled=bool(work) and primary)
    sampled_tokens = 0

    def finish(b: int, sampled: SampledBatch) -> list[dict[str, Any]]:
        rows = score_batch(sampled, backend, tokenizer, e, clock)
        if primary:
            with clock("write"):
                write(b, rows)
        return rows

    def done(rows: list[dict[str, Any]]) -> None:
        nonlocal sampled_tokens
        sampled_tokens += sum(sum(r["gen_len"]) for r in rows)
        bar.update(len(rows))

    pending = None
    batches = sampled_batches(work, backend, tokenizer, e)
    with (ThreadPoolExecutor(max_workers=1, thread_name_prefix="estep-score") if overlap
          else contextlib.nullcontext()) as pool:
        while True:
            with clock("sample"):
                item = next(batches, None)
            if item is None:
                break
            b, sampled = item
            if pending is not None:
                done(pending.result())  # batch b-1, scored while batch b was sampled
                pending = None
            if pool is not None:
                pending = pool.submit(finish, b, sampled)
            else:
                done(finish(b, sampled))
        if pending is not None:
            done(pending.result())
    bar.close()
    return sampled_tokens


def _check_lengths(backend: ModelBackend, e: ml_collections.ConfigDict) -> None:
    model = getattr(backend, "model", None)
    if model is None:
        return
    max_pos = model.config.max_position_embeddings
    if e.max_tokens > max_pos or e.max_new_tokens >= max_pos:
        raise ValueError(f"config.estep.max_tokens={e.max_tokens} (joint length) or max_new_tokens="
                         f"{e.max_new_tokens} does not fit the model's max_position_embeddings={max_pos}; lower them")


def all_slices_done(store: ResultStore, records, num_docs: int, e: ml_collections.ConfigDict) -> bool:
    _, num_slices = parse_slice(e.slice)
    cfg = chunking_config(e)
    for s in range(num_slices):
        chunks = document_chunks(records, slice_documents(num_docs, s, num_slices), cfg)
        n_batches = math.ceil(len(chunks) / e.chunks_per_batch)
        if not all(store.has_batch(s, num_slices, b) for b in range(n_batches)):
            return False
    return True


def merge_estep(store: ResultStore, records: Sequence[dict[str, Any]], num_docs: int,
                e: ml_collections.ConfigDict) -> dict[str, Any]:
    """The augmented dataset (spec 2.6 bootstrap records, same schema as the API path) and its statistics.

    Called once every slice's shards are in the store (`all_slices_done`); the slices of one store directory share
    its settings by construction (the directory is keyed by their hash), so the rows can be joined as they are.
    """
    stats = _new_merge_stats()
    out_records = _augmented_records(records, num_docs, _rows_by_document(store), stats)
    summary = _merge_summary(stats, store.settings)
    stats_path = _write_merged(e.output_path, out_records, summary)
    log.info("E-step merged %d documents, %d chunks -> %s", summary["documents"], summary["chunks"], e.output_path)
    return {"output_path": e.output_path, "stats_path": stats_path, **{k: v for k, v in summary.items()
                                                                       if k != "settings"}}


def _rows_by_document(store: ResultStore) -> dict[int, dict[int, dict[str, Any]]]:
    """Every stored chunk row as {doc index: {chunk index: row}}: the shards come in no particular order and a
    document's chunks may be spread over batches (and slice boundaries), so they are regrouped before writing."""
    by_doc: dict[int, dict[int, dict[str, Any]]] = {}
    for row in store.rows():
        by_doc.setdefault(row["doc_index"], {})[row["chunk_index"]] = row
    return by_doc


def _new_merge_stats() -> dict[str, Any]:
    """Running counts and per-chunk lists, filled by `_count_chunk` and reduced by `_merge_summary`."""
    return {"documents": 0, "chunks": 0, "samples": 0, "not_done": 0, "prompt_truncated": 0,
            "suffix_tokens_truncated": 0, "ess": [], "max_weight": [], "log_weight_spread": [],
            "thought_tokens": [], "elbo": {}}


def _augmented_records(records: Sequence[dict[str, Any]], num_docs: int,
                       by_doc: dict[int, dict[int, dict[str, Any]]], stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One augmented record per document with results, its chunks in order; a document whose text gave no chunk is
    skipped. A record carries the document's ELBO sums and its count of truncated suffix tokens."""
    out_records = []
    for d in range(num_docs):
        rows = by_doc.get(d, {})
        chunk_list = []
        doc_elbo: dict[str, float] = {}
        for ci in sorted(rows):
            chunk_list.append(_chosen_chunk(rows[ci], doc_elbo))
            _count_chunk(stats, rows[ci])
        if not chunk_list:
            continue
        rec = augment_record(records[d], chunk_list)
        rec.update(doc_elbo)
        rec["num_suffix_token_truncated"] = sum(c["num_suffix_token_truncated"] for c in chunk_list)
        out_records.append(rec)
        stats["documents"] += 1
    return out_records


def _chosen_chunk(r: dict[str, Any], doc_elbo: dict[str, float]) -> dict[str, Any]:
    """The dataset's view of one chunk row: only the resampled thought (with its log weight) goes into training;
    the chunk's ELBO estimates are kept and added into the document's totals in `doc_elbo`."""
    chunk = {"suffix": r["suffix"], "latent": r["latents"][r["chosen"]],
             "num_suffix_token_truncated": r["num_suffix_token_truncated"],
             "log_importance_weight": r["log_weight"][r["chosen"]], "ess": r["ess"]}
    for key in r:
        if key.startswith("elbo_"):
            chunk[key] = r[key]
            doc_elbo[key] = doc_elbo.get(key, 0.0) + r[key]
    return chunk


def _count_chunk(stats: dict[str, Any], r: dict[str, Any]) -> None:
    """Adds one chunk row (all K samples, not only the chosen one) to the running statistics."""
    stats["chunks"] += 1
    stats["samples"] += len(r["latents"])
    stats["not_done"] += sum(not x for x in r["done"])
    stats["prompt_truncated"] += int(r["prompt_truncated"] > 0)
    stats["suffix_tokens_truncated"] += r["num_suffix_token_truncated"]
    for key in ("ess", "max_weight", "log_weight_spread"):
        stats[key].append(r[key])
    stats["thought_tokens"].extend(r["gen_len"])


def _merge_summary(stats: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The run's health at a glance (sampling that hit max_new_tokens, truncation, weight degeneracy, thought
    length), with the settings that produced it; means are NaN when there are no chunks."""
    return {
        "documents": stats["documents"], "chunks": stats["chunks"], "samples": stats["samples"],
        "share_not_done": stats["not_done"] / max(stats["samples"], 1),
        "prompts_truncated": stats["prompt_truncated"], "suffix_tokens_truncated": stats["suffix_tokens_truncated"],
        "mean_ess": float(np.mean(stats["ess"])) if stats["ess"] else math.nan,
        "mean_max_weight": float(np.mean(stats["max_weight"])) if stats["max_weight"] else math.nan,
        "mean_log_weight_spread": float(np.mean(stats["log_weight_spread"])) if stats["ess"] else math.nan,
        "mean_thought_tokens": float(np.mean(stats["thought_tokens"])) if stats["thought_tokens"] else math.nan,
        "settings": settings,
    }


def _write_merged(output_path: str, out_records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """Writes the dataset and `<name>.stats.json` next to it (atomically, so a reader never sees half a file);
    returns the stats path."""
    write_jsonl(output_path, out_records)
    stats_path = os.path.splitext(output_path)[0] + ".stats.json"
    atomic_write_text(stats_path, json.dumps(summary, indent=2, default=str))
    return stats_path


def load_backend(config: ml_collections.ConfigDict):
    """The JAX sampler and scorer on the trainer's mesh, over the checkpoint's weights."""
    return JaxBackend.from_config(config)
