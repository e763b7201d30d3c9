"""The training data pipeline (Grain): corpus -> formatted documents -> tokens -> packed rows -> host-local batches.

    it = make_batches(config, split="train")        # config.data = default_data_config() (+ overrides)
    batch = next(it)                                  # numpy, [local_rows, seq_len] each, keys ROW_KEYS
    state = it.get_state(); ...; it.set_state(state)  # JSON-able dict; restores the exact next batch
    global_batch = to_global(batch, mesh)             # jax arrays sharded over the mesh's batch axes

Batch keys (bolt_jax.data.packing): inputs, targets (already shifted: the trainer does not shift), segment_ids
(0 = padding), positions, categories (of the target: 1 text, 2 thought, 3 special; 0 padding), loss_weights.

Determinism. The global document stream is a pure function of the seed: position p of the stream is document
perm_e[p mod N] of epoch e = p // N (perm_e a Grain shuffle of the corpus, reshuffled every epoch; identity with
shuffle_documents=False, as the original), formatted with its own RNG default_rng([seed, 2, p]) (coin flips,
raw-mix draws). Row slot j of the R rows of a global batch packs stream positions j, j+R, j+2R, ... into
consecutive rows, one row per batch, so row j of global batch i is a function of (seed, R, i, j) alone. Process k of
n owns the contiguous slots [k R/n, (k+1) R/n) and reads only their records; the global batch is the processes'
batches in process order. Batch i is therefore the same for any process count that divides R.

State. An iterator's state is {"slots": one state per slot, "done": one flag per slot}, whatever serves it (the
slots in this process, worker processes, a prefetch thread), so a run resumes with or without workers, and on
another number of processes: `move_slot_states` concatenates the saved processes' slots in process order and
gives each new process its share (bolt_jax.train.checkpointing reads the files). A different global batch is a
different data order and is refused.

Shuffle buffer (`shuffle_buffer_batches` = K > 0, the original's prefetch shuffle): each slot serves its packed
rows in blocks of K, each block permuted by default_rng([seed + 1, slot, R, block]). A process's slots hold the
same K x rows rows as the original's buffer of prefetch_size x batch_size sequences; here a row stays in its slot,
so batch i still does not depend on the process count and a buffered state moves between process counts. The
state keeps where the block started, so a resume re-reads (at most K rows per slot) and re-permutes it.

Workers (`worker_count` = W > 0): Grain's `mp_prefetch` runs the slots in W spawned processes, worker w packing
a contiguous group of the slots; the main process joins the W parts of each batch. Same batches as W = 0.
"""

from __future__ import annotations

import logging
from typing import Any

import grain
import ml_collections
import numpy as np

from bolt_jax.config import check_choice, check_whole
from bolt_jax.data.formats import FORMATS, format_document
from bolt_jax.data.packing import (
    PACKING_MODES,
    ROW_KEYS,
    LossWeights,
)
from bolt_jax.data.readers import CorpusSource, open_corpus
from bolt_jax.data.row_slots import PackedBatches, RowSlotBatches, ShuffledRows, WorkerBatches
from bolt_jax.data.tokenizer import BoltTokenizer, cached_tokenizer

log = logging.getLogger(__name__)


def default_data_config() -> ml_collections.ConfigDict:
    """`config.data`: every field of the data pipeline, with the original's defaults where it has them."""
    c = ml_collections.ConfigDict()
    c.source = "corpus"  # "corpus": this pipeline; the trainer also knows "synthetic" (random tokens)
    # Corpora: a .jsonl/.parquet file, a directory of them (e.g. a `prepare` output split), tfds:NAME[:SPLIT]
    # or tfds_dir:PATH[:SPLIT]. validation_path may be "" (no validation data).
    c.train_path = ""
    c.validation_path = ""
    c.tfds_data_dir = ""  # data_dir for tfds: sources ("" = TFDS default)
    c.strict = False  # True: a malformed record is fatal; False: counted, reported (file:line) and skipped
    # HF tokenizer directory (tokenizer.json); must hold the four BoLT special tokens as single ids.
    c.tokenizer_path = ""
    # How a record becomes text: raw | prior | posterior | random | prior_only | posterior_only | pure
    # ("random" is the original's thought-augmented training format; "raw" the raw baselines).
    c.latent_type = "random"
    c.validation_latent_type = "raw"  # validation NLL is on raw text, as the original
    c.mix_in_raw_ratio = 0.0  # probability of emitting an augmented document raw instead
    c.fall_back_to_raw = False  # a record without chunks: True -> raw text; False -> error
    c.seq_len = 2048
    c.global_batch_size = 0  # rows per step over all processes; 0 = take config.train.global_batch_size
    c.seed = -1  # -1 = take the top-level config.seed
    c.shuffle_documents = False  # reshuffle the document order every epoch (the original never shuffles)
    c.num_epochs = -1  # passes over the training corpus; -1 = infinite (validation is always one pass)
    c.packing = "concat"  # concat (the original: no document mask) | document (segment ids per document)
    # Loss weights of targets by category (the original: all 1; set e.g. thought_weight=0 for ablations).
    c.text_weight = 1.0
    c.thought_weight = 1.0
    c.special_weight = 1.0
    c.prefetch_threads = 0  # >0: a background thread prefetches this many batches (state stays exact)
    # >0: threads per row slot that format and tokenize its next documents ahead of its packer (Grain's ReadOptions,
    # 4 documents ahead per thread); 0 = in the packer's own thread. Grain's default (16 threads and 500 documents
    # ahead per slot) started hundreds of threads per pipeline, which cost more than they read (BENCHMARKS.md).
    c.read_threads = 0
    c.worker_count = 0  # >0: Grain mp_prefetch packs the row slots in this many processes (same batches)
    c.shuffle_buffer_batches = 0  # >0: the original's prefetch shuffle (it used 1024; 512 when bootstrapping)
    return c


READ_AHEAD_PER_THREAD = 4  # documents a slot's reader threads keep formatted ahead, per thread (data.read_threads)
DATA_SOURCES = ("corpus", "synthetic", "sft")  # config.data.source: bolt_jax.train.batches.make_train_batches


def _at_least(key: str, value: Any, low: float, example: Any, note: str = "") -> None:
    import math
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"config.{key}={value!r} must be a finite number >= {low:g}{note}; "
                         f"set e.g. --config.{key}={example}")


def validate_data_config(config: ml_collections.ConfigDict) -> None:
    """The data section's enumerations and numbers (ValueError naming the key), before a model is built: a
    misspelt `packing`, `latent_type` or `source` fails here, not inside the pipeline after compilation. Paths
    are checked by `bolt_jax.workflows.inputs` (the workflows that derive them set them at run time)."""
    if "data" not in config:
        return
    data, defaults = config.data, default_data_config()
    get = lambda k: data.get(k, defaults[k])  # noqa: E731
    check_choice("data.source", get("source"), DATA_SOURCES, defaults.source)
    _at_least("data.seq_len", get("seq_len"), 2, defaults.seq_len)
    if get("source") == "synthetic":
        _at_least("data.synthetic_docs_per_row", data.get("synthetic_docs_per_row", 1), 1, 1)
    if get("source") != "corpus":
        return
    check_choice("data.packing", get("packing"), PACKING_MODES, defaults.packing)
    for key in ("latent_type", "validation_latent_type"):  # "" = raw
        check_choice(f"data.{key}", get(key) or "raw", FORMATS, defaults[key])
    ratio = get("mix_in_raw_ratio")
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:  # nan fails both comparisons
        raise ValueError(f"config.data.mix_in_raw_ratio={ratio!r} must be a probability in [0, 1]; "
                         f"set e.g. --config.data.mix_in_raw_ratio=0")
    for key in ("text_weight", "thought_weight", "special_weight"):
        _at_least(f"data.{key}", get(key), 0.0, defaults[key])
    _at_least("data.global_batch_size", get("global_batch_size"), 0, 0, " (0 = config.train.global_batch_size)")
    check_whole("data.prefetch_threads", get("prefetch_threads"), 0, 0, " (0 = no prefetching)")
    check_whole("data.read_threads", get("read_threads"), 0, 0, " (0 = in the packer's thread)")
    check_whole("data.worker_count", get("worker_count"), 0, 0, " (0 = no worker processes)")
    check_whole("data.shuffle_buffer_batches", get("shuffle_buffer_batches"), 0, 0, " (0 = no shuffle buffer)")
    epochs = get("num_epochs")
    if epochs == 0 or epochs < -1:
        raise ValueError(f"config.data.num_epochs={epochs!r} must be a positive number of passes or -1 (infinite); "
                         f"set e.g. --config.data.num_epochs=-1")


def _resolve(config: ml_collections.ConfigDict, split: str) -> dict[str, Any]:
    data = config.data if "data" in config else config
    defaults = default_data_config()
    get = lambda k: data.get(k, defaults[k])  # noqa: E731
    seed = get("seed")
    if seed is None or seed < 0:
        seed = config.get("seed", 0)
    batch = get("global_batch_size")
    if not batch:
        train = config.get("train", None)
        batch = train.get("global_batch_size", 0) if train is not None else 0
    if not batch or batch < 1:
        raise ValueError("data.global_batch_size (or train.global_batch_size) must be a positive number of rows")
    is_train = split == "train"
    path = get("train_path") if is_train else get("validation_path")
    if not path:
        raise ValueError(f"data.{'train' if is_train else 'validation'}_path is not set (a corpus file, a directory, "
                         "tfds:NAME[:SPLIT] or tfds_dir:PATH[:SPLIT])")
    latent_type = get("latent_type") if is_train else get("validation_latent_type")
    if (latent_type or "raw") not in FORMATS:
        raise ValueError(f"data.latent_type {latent_type!r} is not one of {sorted(FORMATS)}")
    if get("packing") not in PACKING_MODES:
        raise ValueError(f"data.packing {get('packing')!r} is not one of {PACKING_MODES}")
    if not get("tokenizer_path"):
        raise ValueError("data.tokenizer_path is not set (a Hugging Face tokenizer directory)")
    return dict(path=path, strict=get("strict"), tfds_data_dir=get("tfds_data_dir") or None,
                tokenizer_path=get("tokenizer_path"), latent_type=latent_type or "raw",
                mix_in_raw_ratio=get("mix_in_raw_ratio") if is_train else 0.0,
                fall_back_to_raw=get("fall_back_to_raw"), seq_len=get("seq_len"), global_batch_size=batch,
                seed=int(seed) + (0 if is_train else 1), shuffle=get("shuffle_documents") if is_train else False,
                num_epochs=(None if get("num_epochs") < 0 else get("num_epochs")) if is_train else 1,
                packing=get("packing"), prefetch_threads=get("prefetch_threads"), worker_count=get("worker_count"),
                read_threads=get("read_threads"),
                shuffle_buffer=get("shuffle_buffer_batches") if is_train else 0,
                weights=LossWeights(get("text_weight"), get("thought_weight"), get("special_weight")))


class FormatAndTokenize:
    """(stream position, document index) -> {"tokens", "categories"} of the formatted document."""

    def __init__(self, corpus: CorpusSource, tokenizer_path: str, latent_type: str, seed: int,
                 mix_in_raw_ratio: float, fall_back_to_raw: bool):
        self.corpus, self.tokenizer_path = corpus, tokenizer_path
        self.latent_type, self.seed = latent_type, seed
        self.mix_in_raw_ratio, self.fall_back_to_raw = mix_in_raw_ratio, fall_back_to_raw

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in a worker process: load the tokenizer now, in one thread. Grain's reader threads would each
        load it at their first document, and concurrent first imports of transformers fail ("cannot import name
        'AutoTokenizer'")."""
        self.__dict__.update(state)
        cached_tokenizer(self.tokenizer_path)

    def __call__(self, item: tuple[int, int]) -> dict[str, np.ndarray]:
        position, doc_index = item
        tok = cached_tokenizer(self.tokenizer_path)
        rng = np.random.default_rng([self.seed, 2, position])
        pieces = format_document(self.corpus[doc_index], self.latent_type, rng,
                                 mix_in_raw_ratio=self.mix_in_raw_ratio, fall_back_to_raw=self.fall_back_to_raw,
                                 bos=tok.bos_text, eos=tok.eos_text)
        tokens, categories = tok.encode_document(pieces)
        return {"tokens": tokens, "categories": categories}


def _with_position(position: int, doc_index: int) -> tuple[int, int]:
    return position, int(doc_index)


def document_stream(corpus_len: int, *, seed: int, shuffle: bool, num_epochs: int | None, process_index: int,
                    process_count: int) -> grain.MapDataset:
    """(stream position, document index) pairs of positions process_index, process_index + process_count, ...
    of the global document stream (the caller's row slot and the number of slots)."""
    if corpus_len == 0:
        raise ValueError("the corpus has no usable records")
    ds = grain.MapDataset.range(corpus_len)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    ds = ds.map_with_index(_with_position)
    return ds[process_index::process_count]


def build_dataset(*, corpus: CorpusSource, tokenizer: BoltTokenizer, latent_type: str, seq_len: int, rows: int,
                  seed: int, packing: str = "concat", shuffle: bool = False, num_epochs: int | None = None,
                  mix_in_raw_ratio: float = 0.0, fall_back_to_raw: bool = False,
                  weights: LossWeights = LossWeights(), process_index: int = 0, process_count: int = 1,
                  prefetch_threads: int = 0, worker_count: int = 0, shuffle_buffer: int = 0,
                  read_threads: int = 0) -> grain.IterDataset:
    """The pipeline as a Grain IterDataset of host-local batches ([rows, seq_len] per key); `rows` per process.
    `worker_count` processes (at most one per row) pack the slots; `shuffle_buffer` > 0 permutes each slot's rows
    in blocks of that many; `read_threads` > 0 format and tokenize each slot's documents ahead of it."""
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=READ_AHEAD_PER_THREAD * read_threads)
    total_rows = rows * process_count
    fmt = FormatAndTokenize(corpus, tokenizer.path, latent_type, seed, mix_in_raw_ratio, fall_back_to_raw)
    slots = []
    for slot in range(process_index * rows, (process_index + 1) * rows):
        stream = document_stream(len(corpus), seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                                 process_index=slot, process_count=total_rows)
        packed: grain.IterDataset = PackedBatches(stream.map(fmt).to_iter_dataset(read), seq_len=seq_len, mode=packing,
                                                  eos_id=tokenizer.eos_id, weights=weights, rows=1)
        if shuffle_buffer > 0:
            packed = ShuffledRows(packed, size=shuffle_buffer, key=(seed + 1, slot, total_rows))
        slots.append(packed)
    workers = min(worker_count, rows)
    ds: grain.IterDataset = RowSlotBatches(slots, parts=workers > 0)
    if workers > 0:
        _parse_absl_flags()
        ds = WorkerBatches(ds, workers)
    if prefetch_threads > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch_threads)
    return ds


def _parse_absl_flags() -> None:
    """Grain's worker processes read absl flags; a program that did not parse them (absl.app does) would fail there."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_batches(config: ml_collections.ConfigDict, split: str = "train", *, process_index: int | None = None,
                 process_count: int | None = None):
    """A checkpointable iterator (get_state/set_state) of this process's batches for `split` ("train" or
    "validation"). `config` is the full run config (uses config.data, config.seed, config.train.global_batch_size)
    or a data section alone. With data.worker_count > 0, close() it when done to stop the workers early."""
    import jax

    opts = _resolve(config, split)
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if opts["global_batch_size"] % pc:
        raise ValueError(f"global batch {opts['global_batch_size']} is not divisible by the {pc} processes")
    tokenizer = cached_tokenizer(opts["tokenizer_path"])
    corpus = open_corpus(opts["path"], strict=opts["strict"], tfds_data_dir=opts["tfds_data_dir"])
    if corpus.report.num_malformed:
        log.warning("data %s: %s", split, corpus.report.summary())
    ds = build_dataset(corpus=corpus, tokenizer=tokenizer, latent_type=opts["latent_type"], seq_len=opts["seq_len"],
                       rows=opts["global_batch_size"] // pc, seed=opts["seed"], packing=opts["packing"],
                       shuffle=opts["shuffle"], num_epochs=opts["num_epochs"],
                       mix_in_raw_ratio=opts["mix_in_raw_ratio"], fall_back_to_raw=opts["fall_back_to_raw"],
                       weights=opts["weights"], process_index=pi, process_count=pc,
                       prefetch_threads=opts["prefetch_threads"], worker_count=opts["worker_count"],
                       shuffle_buffer=opts["shuffle_buffer"], read_threads=opts["read_threads"])
    return iter(ds)


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, Any]:
    """Host-local batch -> global jax arrays sharded over the mesh's batch axes (processes in order)."""
    from bolt_jax.parallel import shard_batch

    return shard_batch(batch, mesh)


assert set(ROW_KEYS) == {"inputs", "targets", "segment_ids", "positions", "categories", "loss_weights"}
