"""Packing tokenized documents into fixed rows of `seq_len` (input, target) pairs.

Target convention: a row holds `inputs` and `targets` already shifted (targets[t] is the token after inputs[t]);
the trainer never shifts. Every row carries, per position:
  inputs, targets   int32 [seq_len]
  segment_ids       int32: 1, 2, ... per document piece in the row; 0 = padding
  positions         int32: RoPE positions
  categories        int8: the category of the *target* (1 text, 2 thought, 3 special incl. BOS/EOS; 0 padding)
  loss_weights      float32: weights[category] (all ones by default, as the original: no loss mask)

Modes (`packing`):
  "concat"    the original (spec 4.3): documents ([BOS] doc [EOS]) are one stream cut into windows of seq_len + 1
              overlapping by one token, so every stream token after the first is a target exactly once; one
              segment per row, positions 0..seq_len-1, attention crosses documents.
  "document"  the same stream order, but pairs never cross a document boundary (EOS -> next BOS is not a
              target), each document piece in a row gets its own segment id and positions restarting at 0, so
              attention with segment ids never looks across documents. A document longer than the room left is
              split across rows (its continuation restarts at position 0, like any row of the original).
Neither mode pads, except the last row of a finite stream.

`document_pairs` gives a document's pairs; `RowAssembler` cuts a stream of them into rows and can say exactly
where it is (document, offset), which is what the Grain iterator checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

PACKING_MODES = ("concat", "document")
ROW_KEYS = ("inputs", "targets", "segment_ids", "positions", "categories", "loss_weights")


@dataclass(frozen=True)
class LossWeights:
    """Loss weight of a target by its category (ablations; the original weights everything 1)."""

    text: float = 1.0
    thought: float = 1.0
    special: float = 1.0

    def table(self) -> np.ndarray:
        return np.array([0.0, self.text, self.thought, self.special], np.float32)


def document_pairs(tokens: np.ndarray, categories: np.ndarray, mode: str, eos_id: int) -> dict[str, np.ndarray]:
    """(input, target) pairs of one [BOS] ... [EOS] document.

    concat:   inputs [EOS_prev, t0, ..., t_{n-2}], targets [t0, ..., t_{n-1}] (n pairs; the stream's very first
              pair, whose input is the EOS of a document that does not exist, is skipped by starting at offset 1).
    document: inputs t0..t_{n-2}, targets t1..t_{n-1} (n - 1 pairs).
    """
    if mode == "concat":
        inputs = np.concatenate([np.array([eos_id], np.int32), tokens[:-1]])
        return {"inputs": inputs, "targets": tokens, "categories": categories}
    if mode == "document":
        return {"inputs": tokens[:-1], "targets": tokens[1:], "categories": categories[1:]}
    raise ValueError(f"unknown packing mode {mode!r}; choose one of {PACKING_MODES}")


def first_offset(mode: str) -> int:
    """Where a fresh stream starts in its first document's pairs."""
    return 1 if mode == "concat" else 0


class RowAssembler:
    """Cuts documents' pairs into rows. Feed with `push(pairs)` when `needs_document()`; take rows with `pop_row()`.

    The assembler's position is (documents pushed, offset into the current one); a row only depends on where it
    starts, so a pipeline restores by re-reading the document a row starts in and skipping `offset` pairs.
    """

    def __init__(self, seq_len: int, mode: str, weights: LossWeights = LossWeights()):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if mode not in PACKING_MODES:
            raise ValueError(f"unknown packing mode {mode!r}; choose one of {PACKING_MODES}")
        self.seq_len, self.mode = seq_len, mode
        self.weight_table = weights.table()
        self._doc: dict[str, np.ndarray] | None = None
        self.offset = 0  # pairs of the current document already in rows

    def needs_document(self) -> bool:
        return self._doc is None or self.offset >= len(self._doc["targets"])

    def push(self, pairs: dict[str, np.ndarray], offset: int = 0) -> None:
        self._doc, self.offset = pairs, offset

    def _new_row(self) -> dict[str, np.ndarray]:
        s = self.seq_len
        return {"inputs": np.zeros(s, np.int32), "targets": np.zeros(s, np.int32),
                "segment_ids": np.zeros(s, np.int32), "positions": np.zeros(s, np.int32),
                "categories": np.zeros(s, np.int8), "loss_weights": np.zeros(s, np.float32)}

    def fill_row(self, next_document) -> tuple[dict[str, np.ndarray], bool]:
        """One row, pulling documents with `next_document()` (returns pairs, or None at the end of a finite
        stream). Returns (row, complete); an incomplete row is padded (segment 0, weight 0)."""
        row = self._new_row()
        filled, segment = 0, 0
        while filled < self.seq_len:
            if self.needs_document():
                pairs = next_document()
                if pairs is None:
                    break
                self.push(pairs)
            n = min(self.seq_len - filled, len(self._doc["targets"]) - self.offset)
            if n <= 0:
                continue
            sl, dst = slice(self.offset, self.offset + n), slice(filled, filled + n)
            for key in ("inputs", "targets", "categories"):
                row[key][dst] = self._doc[key][sl]
            if self.mode == "document":
                segment += 1
                row["segment_ids"][dst] = segment
                row["positions"][dst] = np.arange(n, dtype=np.int32)
            self.offset += n
            filled += n
        if self.mode == "concat":
            row["segment_ids"][:filled] = 1
            row["positions"][:filled] = np.arange(filled, dtype=np.int32)
        row["loss_weights"] = self.weight_table[row["categories"]]
        return row, filled == self.seq_len


def pack_documents(documents: Iterable[tuple[np.ndarray, np.ndarray]], seq_len: int, mode: str, eos_id: int,
                   weights: LossWeights = LossWeights(), pad_last: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """Rows from (tokens, categories) documents, in order; the last partial row is padded (or dropped)."""
    it = iter(documents)

    def next_document():
        doc = next(it, None)
        return None if doc is None else document_pairs(doc[0], doc[1], mode, eos_id)

    asm = RowAssembler(seq_len, mode, weights)
    first = next_document()
    if first is None:
        return
    asm.push(first, first_offset(mode))
    while True:
        row, complete = asm.fill_row(next_document)
        if complete:
            yield row
            continue
        if pad_last and (row["segment_ids"] > 0).any():
            yield row
        return


def stack_rows(rows: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in ROW_KEYS}
