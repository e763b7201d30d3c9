"""Test fixtures built on the fly: a tiny random HF Llama saved with save_pretrained, and a BPE tokenizer with the
four BoLT special tokens. Nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

BOLT_TOKENS = ["<|START_OF_LATENT|>", "<|END_OF_LATENT|>", "<|PRIOR_PREFIX|>", "<|POSTERIOR_PREFIX|>"]

_TOKENIZER_TEXT = """Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.
How many clips did Natalia sell altogether in April and May? Natalia sold 48/2 = 24 clips in May.
Natalia sold 48+24 = 72 clips altogether in April and May. The answer is 72.
Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?
Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10.
Let x be the number of apples. Then 3x + 5 = 20, so 3x = 15 and x = 5. We compute 7 * 8 = 56 and 56 - 6 = 50.
A triangle has angles that sum to 180 degrees. The area of a circle is pi r^2. Therefore the result follows.
"""


def tokenizer_corpus() -> list[str]:
    lines = _TOKENIZER_TEXT.strip().splitlines()
    lines += [f"{a} + {b} = {a + b}. {a} * {b} = {a * b}." for a in range(0, 40, 3) for b in range(1, 30, 4)]
    return lines


def build_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 512, add_bolt_tokens: bool = True) -> str:
    """A byte-level BPE tokenizer in HF format (<unk>=0, <s>=1, </s>=2 like Llama), BoLT tokens appended at the end."""
    from bolt_jax.data.bpe import train_bpe_tokenizer
    return train_bpe_tokenizer(tokenizer_corpus(), out_dir, vocab_size=vocab_size, add_bolt_tokens=add_bolt_tokens)


def build_hf_model(out_dir: str | os.PathLike, *, vocab_size: int = 512, tie: bool = False, num_layers: int = 2,
                   hidden: int = 64, heads: int = 4, kv_heads: int = 2, intermediate: int = 172, seed: int = 0,
                   tokenizer: bool = True, dtype: str = "float32") -> str:
    """A tiny random transformers.LlamaForCausalLM saved with save_pretrained (safetensors), plus its tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    out_dir = str(out_dir)
    model.save_pretrained(out_dir)
    if tokenizer:
        build_tokenizer(out_dir, vocab_size=vocab_size)
    return out_dir


def hf_logits(model_dir: str | os.PathLike, tokens_BxS) -> object:
    """Logits of the saved HF model (the oracle), fp32 numpy."""
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens_BxS))).logits.float().numpy()


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


# ---- the corpus data pipeline (test_data_pipeline, test_data_resume) ------------------------------------------


def write_toy_data(root: str | os.PathLike) -> dict:
    """A tokenizer and a corpus of 12 thought-augmented toy documents under `root`: {"tok": ..., "aug": ...}."""
    from bolt_jax.data import toy

    root = Path(root)
    aug = root / "aug.jsonl"
    toy.write_corpus(aug, toy.generate(12, seed=5), with_thoughts=True)
    return {"tok": build_tokenizer(root / "tok"), "aug": str(aug)}


def data_config(env: dict, **data):
    """A config of the corpus pipeline over write_toy_data's files: seed 3, rows of 48 tokens, global batches of 4
    rows; `data` overrides config.data's settings."""
    import ml_collections

    from bolt_jax.data import pipeline

    c = ml_collections.ConfigDict({"seed": 3, "data": pipeline.default_data_config()})
    c.data.update(train_path=env["aug"], tokenizer_path=env["tok"], seq_len=48, global_batch_size=4)
    c.data.update(data)
    return c


# ---- thought synthesis against the loopback OpenAI server (test_synth, test_synth_paid_once) --------------------
# The fixtures (server, corpus, openai_api_key) are in conftest.py.

OPENAI_TEST_KEY = "sk-test-SECRET-0123456789"
SYNTH_DOCS = [
    "Natalia sold clips to 48 friends in April. In May she sold half as many. How many in total? The answer is 72.",
    "A triangle has angles of 50 and 60 degrees. The third angle is 70 degrees.\n\nTherefore it is acute.",
    "Weng earns 12 dollars an hour. For 50 minutes she earns 10 dollars. TRUNCATE-ME",
    "Compute 7 * 8 = 56. Then 56 - 6 = 50.",
]


def synth_config(tmp_path, corpus, server, **kw):
    """A synth config reading `corpus`, writing under tmp_path/out, talking to the loopback `server` with fast
    polls and retries; `kw` overrides config.synth's settings."""
    from bolt_jax.config import base_config
    from bolt_jax.synth.run import default_synth_config

    c = base_config()
    c.synth = default_synth_config()
    c.synth.update(corpus_path=str(corpus), output_path=str(tmp_path / "out" / "aug.jsonl"), base_url=server.base_url,
                   env_file="", max_usd=1.0, poll_interval_s=0.01, backoff_base_s=0.01, timeout_s=1.0,
                   units_per_chunk=2)
    c.synth.update(kw)
    return c
