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

import copy
import logging
from typing import Any

import grain
import ml_collections
import numpy as np

from bolt_jax.data.formats import FORMATS, format_document
from bolt_jax.data.packing import (
    PACKING_MODES,
    ROW_KEYS,
    LossWeights,
    RowAssembler,
    document_pairs,
    first_offset,
    stack_rows,
)
from bolt_jax.data.readers import CorpusSource, open_corpus
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
    c.worker_count = 0  # >0: Grain mp_prefetch packs the row slots in this many processes (same batches)
    c.shuffle_buffer_batches = 0  # >0: the original's prefetch shuffle (it used 1024; 512 when bootstrapping)
    return c


DATA_SOURCES = ("corpus", "synthetic", "sft")  # config.data.source: bolt_jax.train.batches.make_train_batches


def _choice(key: str, value: Any, choices, default: str) -> None:
    if value not in choices:
        raise ValueError(f"config.{key}={value!r} is not one of {sorted(choices)}; set e.g. --config.{key}={default}")


def _at_least(key: str, value: Any, low: float, example: Any, note: str = "") -> None:
    import math
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"config.{key}={value!r} must be a finite number >= {low:g}{note}; "
                         f"set e.g. --config.{key}={example}")


def _count(key: str, value: Any, note: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"config.{key}={value!r} must be a whole number >= 0 {note}; set e.g. --config.{key}=0")


def validate_data_config(config: ml_collections.ConfigDict) -> None:
    """The data section's enumerations and numbers (ValueError naming the key), before a model is built: a
    misspelt `packing`, `latent_type` or `source` fails here, not inside the pipeline after compilation. Paths
    are checked by `bolt_jax.workflows.inputs` (the workflows that derive them set them at run time)."""
    if "data" not in config:
        return
    data, defaults = config.data, default_data_config()
    get = lambda k: data.get(k, defaults[k])  # noqa: E731
    _choice("data.source", get("source"), DATA_SOURCES, defaults.source)
    _at_least("data.seq_len", get("seq_len"), 2, defaults.seq_len)
    if get("source") == "synthetic":
        _at_least("data.synthetic_docs_per_row", data.get("synthetic_docs_per_row", 1), 1, 1)
    if get("source") != "corpus":
        return
    _choice("data.packing", get("packing"), PACKING_MODES, defaults.packing)
    for key in ("latent_type", "validation_latent_type"):  # "" = raw
        _choice(f"data.{key}", get(key) or "raw", FORMATS, defaults[key])
    ratio = get("mix_in_raw_ratio")
    if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:  # nan fails both comparisons
        raise ValueError(f"config.data.mix_in_raw_ratio={ratio!r} must be a probability in [0, 1]; "
                         f"set e.g. --config.data.mix_in_raw_ratio=0")
    for key in ("text_weight", "thought_weight", "special_weight"):
        _at_least(f"data.{key}", get(key), 0.0, defaults[key])
    _at_least("data.global_batch_size", get("global_batch_size"), 0, 0, " (0 = config.train.global_batch_size)")
    _at_least("data.prefetch_threads", get("prefetch_threads"), 0, 0, " (0 = no prefetching)")
    _count("data.worker_count", get("worker_count"), "(0 = no worker processes)")
    _count("data.shuffle_buffer_batches", get("shuffle_buffer_batches"), "(0 = no shuffle buffer)")
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


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, seq_len: int, mode: str, eos_id: int, weights: LossWeights,
                 rows: int, pad_last: bool):
        super().__init__(parent)
        self._asm = RowAssembler(seq_len, mode, weights)
        self._mode, self._eos_id, self._rows, self._pad_last = mode, eos_id, rows, pad_last
        self._doc_state = parent.get_state()  # parent state *before* the document being consumed
        self._pending_offset: int | None = first_offset(mode)  # skip this many pairs of the next document
        self._exhausted = False

    def _next_document(self):
        state = self._parent.get_state()
        try:
            doc = next(self._parent)
        except StopIteration:
            return None
        self._doc_state = state
        return document_pairs(doc["tokens"], doc["categories"], self._mode, self._eos_id)

    def __next__(self) -> dict[str, np.ndarray]:
        if self._exhausted:
            raise StopIteration
        if self._pending_offset is not None:  # start or restore: the first document, entered at its offset
            offset, self._pending_offset = self._pending_offset, None
            pairs = self._next_document()
            if pairs is None:
                self._exhausted = True
                raise StopIteration
            self._asm.push(pairs, offset)
        rows = []
        for _ in range(self._rows):
            row, complete = self._asm.fill_row(self._next_document)
            if not complete:
                self._exhausted = True
                if (row["segment_ids"] > 0).any() and self._pad_last:
                    rows.append(row)
                break
            rows.append(row)
        if not rows:
            raise StopIteration
        while len(rows) < self._rows:  # the end of a finite stream: pad with empty rows (weight 0)
            rows.append({k: np.zeros_like(v) for k, v in rows[0].items()})
        return stack_rows(rows)

    def get_state(self) -> dict[str, Any]:
        if self._pending_offset is not None:
            return {"document": self._doc_state, "offset": self._pending_offset, "exhausted": self._exhausted}
        return {"document": self._doc_state, "offset": self._asm.offset, "exhausted": self._exhausted}

    def set_state(self, state: dict[str, Any]) -> None:
        if "document" not in state:
            raise ValueError(_buffer_mismatch(state, 0))
        self._parent.set_state(state["document"])
        self._doc_state = state["document"]
        self._pending_offset = int(state["offset"])
        self._exhausted = bool(state.get("exhausted", False))


class PackedBatches(grain.IterDataset):
    """Grain IterDataset: documents {"tokens", "categories"} -> batches of `rows` packed rows."""

    def __init__(self, parent: grain.IterDataset, *, seq_len: int, mode: str, eos_id: int, weights: LossWeights,
                 rows: int, pad_last: bool = True):
        super().__init__(parent)
        self._kw = dict(seq_len=seq_len, mode=mode, eos_id=eos_id, weights=weights, rows=rows, pad_last=pad_last)

    def __iter__(self) -> _PackIterator:
        return _PackIterator(self._parent.__iter__(), **self._kw)


def _buffer_size_of(state: dict[str, Any]) -> int:
    """The shuffle buffer a slot state was saved with (0: none; a shuffled slot's state has a "block")."""
    return int(state.get("size", 0)) if "block" in state else 0


def _buffer_mismatch(state: dict[str, Any], size: int) -> str:
    return (f"the data state was saved with data.shuffle_buffer_batches={_buffer_size_of(state)} and this run has "
            f"{size}: that is another data order; resume with --config.data.shuffle_buffer_batches="
            f"{_buffer_size_of(state)} or start a new run")


class _ShuffleIterator(grain.DatasetIterator):
    """One slot's rows served in blocks of `size`, each block permuted by default_rng([*key, block]) (the original's
    prefetch shuffle, per slot). The state is where the block started (the packer's state), the block's number and
    the rows served from it, so a restore re-reads and re-permutes the block instead of the checkpoint holding up to
    `size` rows of tokens per slot."""

    def __init__(self, parent: grain.DatasetIterator, size: int, key: tuple[int, ...]):
        super().__init__(parent)
        self._size, self._key = size, key
        self._start, self._block, self._index = parent.get_state(), 0, 0
        self._rows: list[dict[str, np.ndarray]] | None = None  # the block, permuted; None until read

    def _read_block(self) -> list[dict[str, np.ndarray]]:
        rows = []
        for _ in range(self._size):
            try:
                rows.append(next(self._parent))
            except StopIteration:  # a finite stream: its last block is short
                break
        order = np.random.default_rng([*self._key, self._block]).permutation(len(rows))
        return [rows[i] for i in order]

    def _used_up(self) -> bool:
        return self._rows is not None and self._index >= len(self._rows) == self._size

    def __next__(self) -> dict[str, np.ndarray]:
        if self._rows is None:  # start, or after set_state: (re)read the block
            self._rows = self._read_block()
        if self._used_up():
            self._start, self._block, self._index = self._parent.get_state(), self._block + 1, 0
            self._rows = self._read_block()
        if self._index >= len(self._rows):
            raise StopIteration
        self._index += 1
        return self._rows[self._index - 1]

    def get_state(self) -> dict[str, Any]:
        if self._used_up():  # the next block starts where the packer is: nothing to re-read on restore
            return {"start": self._parent.get_state(), "block": self._block + 1, "index": 0, "size": self._size}
        return {"start": self._start, "block": self._block, "index": self._index, "size": self._size}

    def set_state(self, state: dict[str, Any]) -> None:
        if _buffer_size_of(state) != self._size:
            raise ValueError(_buffer_mismatch(state, self._size))
        self._parent.set_state(state["start"])
        self._start, self._block, self._index = state["start"], int(state["block"]), int(state["index"])
        self._rows = None


class ShuffledRows(grain.IterDataset):
    """Grain IterDataset: a slot's rows permuted in blocks of `size` (see _ShuffleIterator)."""

    def __init__(self, parent: grain.IterDataset, *, size: int, key: tuple[int, ...]):
        super().__init__(parent)
        self._size, self._key = size, tuple(int(k) for k in key)

    def __iter__(self) -> _ShuffleIterator:
        return _ShuffleIterator(self._parent.__iter__(), self._size, self._key)


def _join(parts: list[dict[str, np.ndarray] | None], sizes: list[int]) -> dict[str, np.ndarray]:
    """Concatenates batch parts in order; a missing part (its slots ended: a finite stream ends at different batches
    in different slots) becomes `size` empty rows (weight 0). At least one part must be present."""
    template = next(p for p in parts if p is not None)
    def rows(part, size, key):
        return part[key] if part is not None else np.zeros((size, *template[key].shape[1:]), template[key].dtype)
    return {k: np.concatenate([rows(p, n, k) for p, n in zip(parts, sizes)]) for k in template}


class _RowSlotsIterator(grain.DatasetIterator):
    """This process's slots, one row each per batch. With `parts` (in a worker) it yields {"batch", "state"} and never
    ends: an empty batch ({}) once its slots are done, so every worker gives one part per batch."""

    def __init__(self, slots: list[grain.DatasetIterator], parts: bool = False):
        super().__init__(slots)
        self._slots, self._parts = slots, parts
        self._done = [False] * len(slots)

    def _next_rows(self) -> list[dict[str, np.ndarray] | None]:
        rows: list[dict[str, np.ndarray] | None] = []
        for i, it in enumerate(self._slots):
            row = None
            if not self._done[i]:
                try:
                    row = next(it)
                except StopIteration:
                    self._done[i] = True
            rows.append(row)
        return rows

    def __next__(self) -> dict[str, Any]:
        rows = self._next_rows()
        live = any(r is not None for r in rows)
        batch = _join(rows, [1] * len(rows)) if live else {}
        if self._parts:
            return {"batch": batch, "state": self.get_state()}
        if not live:
            raise StopIteration
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"slots": [it.get_state() for it in self._slots], "done": list(self._done)}

    def set_state(self, state: dict[str, Any]) -> None:
        _check_slot_count(state, len(self._slots))
        for it, slot_state in zip(self._slots, state["slots"]):
            it.set_state(slot_state)
        self._done = [bool(d) for d in state["done"]]


def _check_slot_count(state: dict[str, Any], slots: int) -> None:
    if len(state["slots"]) != slots or len(state["done"]) != slots:
        raise ValueError(f"the data state has {len(state['slots'])} row slots and this iterator {slots}: restore with "
                         "the same global batch size (another process count goes through move_slot_states)")


def worker_groups(rows: int, workers: int) -> list[range]:
    """The contiguous groups of a process's `rows` slots that `workers` worker processes pack (sizes differ by at
    most one; every group is non-empty when workers <= rows)."""
    base, extra = divmod(rows, workers)
    starts = [w * base + min(w, extra) for w in range(workers + 1)]
    return [range(starts[w], starts[w + 1]) for w in range(workers)]


class RowSlotBatches(grain.IterDataset):
    """Grain IterDataset: one single-row packer per row slot, zipped into this process's batch. With `parts` it is
    the dataset Grain's mp_prefetch runs in the workers: Grain calls `set_slice(slice(w, None, W))` in worker w, which
    keeps only worker w's group of slots (not every W-th document: that would change the packing), and the
    iterator yields parts (see _RowSlotsIterator). `initial_state` (all slots) is where the iterators start."""

    def __init__(self, slots: list[grain.IterDataset], *, parts: bool = False,
                 initial_state: dict[str, Any] | None = None):
        super().__init__(slots)
        self._slot_datasets, self._parts, self._initial = slots, parts, initial_state
        self._group: range = range(len(slots))

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """Grain's in-place slicing hook (prefetch.SupportsInPlaceSlicing), called in mp_prefetch worker sl.start."""
        if not isinstance(sl.start, int) or not isinstance(sl.step, int) or sl.stop is not None:
            raise ValueError(f"RowSlotBatches only takes a worker's slice(w, None, W), not {sl}")
        self._group = worker_groups(len(self._slot_datasets), sl.step)[sl.start]

    def starting_at(self, state: dict[str, Any]) -> RowSlotBatches:
        out = copy.copy(self)
        out._initial = state
        return out

    def __iter__(self) -> _RowSlotsIterator:
        it = _RowSlotsIterator([self._slot_datasets[i].__iter__() for i in self._group], parts=self._parts)
        if self._initial is not None:
            _check_slot_count(self._initial, len(self._slot_datasets))
            it.set_state({k: [self._initial[k][i] for i in self._group] for k in ("slots", "done")})
        return it


class _WorkerBatchesIterator(grain.DatasetIterator):
    """The batches of W worker processes (Grain's mp_prefetch over RowSlotBatches parts, which it interleaves round
    robin): each batch joins one part of every worker, in order. The parts carry their group's slot states, so this
    iterator's state is the slots' state, as without workers; set_state starts fresh workers at it. No Grain
    worker-state format is relied on, and a state moves between worker counts and process counts."""

    def __init__(self, parts: RowSlotBatches, workers: int, state: dict[str, Any]):
        super().__init__()
        self._parts_ds, self._workers, self._state = parts, workers, state
        self._sizes = [len(g) for g in worker_groups(len(state["slots"]), workers)]
        self._it: grain.DatasetIterator | None = None
        self._finished = False

    def start_prefetch(self) -> None:
        """Starts the workers (Grain's checkpoint restore calls this, to overlap their start with the model's)."""
        if self._it is None and not self._finished:
            options = grain.MultiprocessingOptions(num_workers=self._workers)
            self._it = iter(self._parts_ds.starting_at(self._state).mp_prefetch(options))
            self._it.start_prefetch()

    def __next__(self) -> dict[str, np.ndarray]:
        if self._finished:
            raise StopIteration
        self.start_prefetch()
        parts = [next(self._it) for _ in range(self._workers)]
        self._state = {k: [v for p in parts for v in p["state"][k]] for k in ("slots", "done")}
        batches = [p["batch"] or None for p in parts]
        if all(b is None for b in batches):
            self._finished = True
            self._stop()
            raise StopIteration
        return _join(batches, self._sizes)

    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        self._parts_ds.starting_at(state).__iter__()  # checks the state here, not later in a worker
        self._stop()
        self._state, self._finished = copy.deepcopy(state), False

    def _stop(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None

    def close(self) -> None:
        self._stop()
        super().close()


class WorkerBatches(grain.IterDataset):
    """Grain IterDataset: RowSlotBatches (in parts mode) packed by `workers` processes (see _WorkerBatchesIterator)."""

    def __init__(self, parts: RowSlotBatches, workers: int):
        super().__init__(parts)
        self._workers = workers

    def __iter__(self) -> _WorkerBatchesIterator:
        return _WorkerBatchesIterator(self._parent, self._workers, self._parent.__iter__().get_state())


def move_slot_states(saved: list[dict[str, Any]], current: dict[str, Any], process_index: int,
                     process_count: int) -> dict[str, Any]:
    """This process's data state from the states the processes of an earlier run saved (in process order; any
    number of them): their slots concatenated are the global batch's row slots, and this process owns the
    contiguous share that `current` (its iterator's state now) has the size of. ValueError (one line) when the
    global batch differs: another global batch is another data order."""
    if not all(isinstance(s, dict) and "slots" in s and "done" in s for s in [*saved, current]):
        raise ValueError("the data state is not the corpus pipeline's row-slot state, so it cannot move to another "
                         "number of processes; resume with the process count that saved it")
    slots = [x for s in saved for x in s["slots"]]
    done = [bool(x) for s in saved for x in s["done"]]
    rows = len(current["slots"])
    if len(slots) != rows * process_count:
        raise ValueError(f"the data state was saved for a global batch of {len(slots)} rows ({len(saved)} processes)"
                         f" and this run has {rows * process_count} ({process_count} processes): another global batch"
                         " is another data order; resume with the saved global batch size or start a new run")
    lo = process_index * rows
    return {"slots": slots[lo:lo + rows], "done": done[lo:lo + rows]}


def build_dataset(*, corpus: CorpusSource, tokenizer: BoltTokenizer, latent_type: str, seq_len: int, rows: int,
                  seed: int, packing: str = "concat", shuffle: bool = False, num_epochs: int | None = None,
                  mix_in_raw_ratio: float = 0.0, fall_back_to_raw: bool = False,
                  weights: LossWeights = LossWeights(), process_index: int = 0, process_count: int = 1,
                  prefetch_threads: int = 0, worker_count: int = 0, shuffle_buffer: int = 0) -> grain.IterDataset:
    """The pipeline as a Grain IterDataset of host-local batches ([rows, seq_len] per key); `rows` per process.
    `worker_count` processes (at most one per row) pack the slots; `shuffle_buffer` > 0 permutes each slot's rows
    in blocks of that many."""
    total_rows = rows * process_count
    fmt = FormatAndTokenize(corpus, tokenizer.path, latent_type, seed, mix_in_raw_ratio, fall_back_to_raw)
    slots = []
    for slot in range(process_index * rows, (process_index + 1) * rows):
        stream = document_stream(len(corpus), seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                                 process_index=slot, process_count=total_rows)
        packed: grain.IterDataset = PackedBatches(stream.map(fmt).to_iter_dataset(), seq_len=seq_len, mode=packing,
                                                  eos_id=tokenizer.eos_id, weights=weights, rows=1)
        if shuffle_buffer > 0:
            packed = ShuffledRows(packed, size=shuffle_buffer, key=(seed + 1, slot, total_rows))
        slots.append(packed)
    workers = min(worker_count, rows)
    ds: grain.IterDataset = RowSlotBatches(slots, parts=workers > 0)
    if workers > 0:
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
    if opts["worker_count"] > 0:
        _parse_absl_flags()
    ds = build_dataset(corpus=corpus, tokenizer=tokenizer, latent_type=opts["latent_type"], seq_len=opts["seq_len"],
                       rows=opts["global_batch_size"] // pc, seed=opts["seed"], packing=opts["packing"],
                       shuffle=opts["shuffle"], num_epochs=opts["num_epochs"],
                       mix_in_raw_ratio=opts["mix_in_raw_ratio"], fall_back_to_raw=opts["fall_back_to_raw"],
                       weights=opts["weights"], process_index=pi, process_count=pc,
                       prefetch_threads=opts["prefetch_threads"], worker_count=opts["worker_count"],
                       shuffle_buffer=opts["shuffle_buffer"])
    return iter(ds)


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, Any]:
    """Host-local batch -> global jax arrays sharded over the mesh's batch axes (processes in order)."""
    from bolt_jax.parallel import shard_batch

    return shard_batch(batch, mesh)


assert set(ROW_KEYS) == {"inputs", "targets", "segment_ids", "positions", "categories", "loss_weights"}
