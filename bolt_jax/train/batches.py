"""Where the trainer's batches come from: the thought-augmented data pipeline, or random tokens for benchmarks.

Every source yields host-local numpy dicts with the keys of `bolt_jax.train.step.BATCH_KEYS` ([rows, seq_len]
each) and has `get_state()` / `set_state()` so the checkpoint can restore the exact next batch.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import ml_collections
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


def local_rows(global_batch: int) -> int:
    if global_batch % jax.process_count():
        raise ValueError(f"global batch {global_batch} is not divisible by the {jax.process_count()} processes")
    return global_batch // jax.process_count()


def make_train_batches(config: ml_collections.ConfigDict, vocab_size: int, split: str = "train"):
    """The training (or validation) batch source named by `config.data.source`."""
    data = config.data
    if data.source == "synthetic":
        rows = local_rows(config.train.global_batch_size)
        return SyntheticBatches(rows=rows, global_rows=config.train.global_batch_size,
                                row_offset=rows * jax.process_index(), seq_len=data.seq_len,
                                vocab_size=vocab_size, seed=config.seed + (0 if split == "train" else 1),
                                docs_per_row=data.get("synthetic_docs_per_row", 1))
    if data.source == "sft":  # finetune-based evaluation: prompt/completion pairs, loss on completions
        from bolt_jax.data.tokenizer import cached_tokenizer
        from bolt_jax.eval.finetune import SFTBatches, sft_examples
        if split != "train":
            raise ValueError("the sft source has no validation split; set config.train.eval_every=0")
        examples = sft_examples(data.get("sft_benchmark", "gsm8k"), data.sft_path, data.sft_raw_baseline,
                                data.get("sft_limit", 0))
        rows = local_rows(config.train.global_batch_size)
        return SFTBatches(examples, cached_tokenizer(data.tokenizer_path), rows=rows, seq_len=data.seq_len,
                          seed=config.seed + jax.process_index())
    from bolt_jax.data import pipeline  # the thought-augmented corpus (data issue)
    return pipeline.make_batches(config, split=split)
