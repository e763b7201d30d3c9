"""The Grain iterators behind the data pipeline's batches (bolt_jax.data.pipeline builds them): one single-row
packer per row slot of the global batch (`PackedBatches`), the optional per-slot shuffle buffer (`ShuffledRows`),
the slots zipped into this process's batch (`RowSlotBatches`), worker processes that each serve a contiguous group
of slots (`WorkerBatches`), and `move_slot_states`, which redistributes saved slot states to another process count.
The pipeline's docstring says why a batch depends on neither the process count nor the worker count."""

from __future__ import annotations

import copy
from typing import Any

import grain
import numpy as np

from bolt_jax.data.packing import LossWeights, RowAssembler, document_pairs, first_offset, stack_rows


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
