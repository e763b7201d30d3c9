"""The four BoLT special tokens: appended to a tokenizer, and the embedding/output rows grown for them (spec 1).

The original (`setup/download_hf_ckpt.py --add-special-tokens`) appends the tokens in enum order (TinyLlama: ids
32000-32003, vocab 32004) and draws each new row from N(0, hidden^-0.5) clamped to +-3 std with a fixed seed (42);
an untied output matrix gets its own draw with the same recipe, a tied one is grown once (it is the embedding).
We draw with numpy's PCG64(42): the recipe is the same, the exact numbers are not torch's.
"""

from __future__ import annotations

import os

import numpy as np

from bolt_jax.data.formats import SPECIAL_TOKENS

NEW_ROW_SEED = 42


def add_bolt_tokens(tokenizer_dir: str, out_dir: str) -> tuple[int, dict[str, int]]:
    """Loads the tokenizer in `tokenizer_dir`, appends whichever BoLT tokens it lacks, saves it to `out_dir`.
    Returns (len(tokenizer) after, {token: id}); tokens already present keep their ids and are not added again."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = tok.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
    backend = getattr(tok, "backend_tokenizer", None)
    for t, i in ids.items():
        if backend is not None and backend.encode(t, add_special_tokens=False).ids != [i]:
            raise ValueError(f"tokenizer in {tokenizer_dir}: {t!r} exists but is not a single special token "
                             f"(encodes to {backend.encode(t, add_special_tokens=False).ids})")
    os.makedirs(out_dir, exist_ok=True)
    tok.save_pretrained(out_dir)
    return len(tok), ids


def new_rows(rng: np.random.Generator, num_rows: int, hidden_size: int) -> np.ndarray:
    """[num_rows, hidden] float64 rows ~ N(0, hidden^-0.5), clamped to +-3 std (the original's recipe)."""
    std = hidden_size ** -0.5
    return np.clip(rng.normal(0.0, std, size=(num_rows, hidden_size)), -3 * std, 3 * std)


def grown_rows(num_rows: int, hidden_size: int, tied: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(embedding rows, output rows or None when tied): one fixed-seed generator, embedding drawn first."""
    rng = np.random.Generator(np.random.PCG64(NEW_ROW_SEED))
    embed = new_rows(rng, num_rows, hidden_size)
    return embed, None if tied else new_rows(rng, num_rows, hidden_size)
