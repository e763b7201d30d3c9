"""Batch sources besides the corpus pipeline (`bolt_jax.data.pipeline`): uniform random tokens for benchmarks and
tests, and prompt/completion rows for finetune evaluation. Each yields host-local numpy dicts with the trainer's
keys ([rows, seq_len] each) and, like the pipeline, `get_state()` / `set_state()`: batch i is a pure function of
(seed, i), so a checkpoint restores the exact next batch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class IndexedBatches:
    """A batch source whose position is one counter: batch i is a pure function of (seed, i)."""

    index: int = 0

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index}

    def set_state(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self


class SyntheticBatches(IndexedBatches):
    """Uniform random tokens; global batch i is a pure function of (seed, i), and each process keeps its own
    rows of it, so any number of processes sees the same global batch. For benchmarks and tests only."""

    def __init__(self, *, rows: int, seq_len: int, vocab_size: int, seed: int, docs_per_row: int = 1,
                 global_rows: int | None = None, row_offset: int = 0):
        self.rows, self.seq_len, self.vocab_size, self.seed = rows, seq_len, vocab_size, seed
        self.global_rows = global_rows or rows
        self.row_offset = row_offset
        self.docs_per_row = docs_per_row
        self.index = 0

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        tokens = rng.integers(0, self.vocab_size, (self.global_rows, self.seq_len + 1), dtype=np.int32)
        tokens = tokens[self.row_offset:self.row_offset + self.rows]
        doc_len = -(-self.seq_len // self.docs_per_row)
        segment_ids = (np.arange(self.seq_len) // doc_len + 1).astype(np.int32)
        positions = (np.arange(self.seq_len) % doc_len).astype(np.int32)
        categories = np.full((self.rows, self.seq_len), 1, np.int8)
        return {
            "inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "segment_ids": np.broadcast_to(segment_ids, (self.rows, self.seq_len)).copy(),
            "positions": np.broadcast_to(positions, (self.rows, self.seq_len)).copy(),
            "loss_weights": np.ones((self.rows, self.seq_len), np.float32), "categories": categories,
        }



class SFTBatches(IndexedBatches):
    """Rows of [BOS] prompt completion [EOS], right-padded, loss on completion + EOS; epochs reshuffled by seed.
    Checkpointable like every trainer source (batch i is a function of the seed and i)."""

    def __init__(self, examples: list[dict[str, str]], tokenizer, *, rows: int, seq_len: int, seed: int):
        self.rows, self.seq_len, self.seed = rows, seq_len, seed
        self.encoded = []
        for ex in examples:
            p = [tokenizer.bos_id] + tokenizer.encode(ex["prompt"])
            c = tokenizer.encode(ex["completion"]) + [tokenizer.eos_id]
            ids = (p + c)[: seq_len + 1]
            self.encoded.append((np.asarray(ids, np.int32), len(p)))
        self.index = 0

    def __next__(self) -> dict[str, np.ndarray]:
        n = len(self.encoded)
        out = {k: np.zeros((self.rows, self.seq_len), np.int32) for k in ("inputs", "targets", "positions",
                                                                          "segment_ids")}
        out["loss_weights"] = np.zeros((self.rows, self.seq_len), np.float32)
        out["categories"] = np.zeros((self.rows, self.seq_len), np.int8)
        for r in range(self.rows):
            pos = self.index * self.rows + r
            epoch, k = divmod(pos, n)
            ids, plen = self.encoded[int(np.random.default_rng([self.seed, epoch]).permutation(n)[k])]
            m = len(ids) - 1
            out["inputs"][r, :m], out["targets"][r, :m] = ids[:-1], ids[1:]
            out["positions"][r, :m] = np.arange(m)
            out["segment_ids"][r, :m] = 1
            out["loss_weights"][r, plen - 1:m] = 1.0  # targets from the first completion token on
            out["categories"][r, plen - 1:m] = 1
        self.index += 1
        return out
