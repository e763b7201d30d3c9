"""Where the trainer's batches come from (`config.data.source`): the thought-augmented data pipeline, random tokens
for benchmarks, or prompt/completion rows for finetune evaluation (the sources live in `bolt_jax.data`).

Every source yields host-local numpy dicts with the keys of `bolt_jax.train.step.BATCH_KEYS` ([rows, seq_len]
each) and has `get_state()` / `set_state()` so the checkpoint can restore the exact next batch.
"""

from __future__ import annotations

import jax
import ml_collections

from bolt_jax.data.sources import SyntheticBatches


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
        from bolt_jax.data.sources import SFTBatches
        from bolt_jax.data.tokenizer import cached_tokenizer
        from bolt_jax.eval.sft import sft_examples
        if split != "train":
            raise ValueError("the sft source has no validation split; set config.train.eval_every=0")
        examples = sft_examples(data.get("sft_benchmark", "gsm8k"), data.sft_path, data.sft_raw_baseline,
                                data.get("sft_limit", 0))
        rows = local_rows(config.train.global_batch_size)
        return SFTBatches(examples, cached_tokenizer(data.tokenizer_path), rows=rows, seq_len=data.seq_len,
                          seed=config.seed + jax.process_index())
    from bolt_jax.data import pipeline  # the thought-augmented corpus (data issue)
    return pipeline.make_batches(config, split=split)
