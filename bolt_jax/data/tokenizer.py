"""The one tokenizer of a run: loaded once from a Hugging Face tokenizer directory and used for training, sampling
and evaluation alike (the original mixed a slow and a fast tokenizer; spec 11.14).

`load_tokenizer(path)` checks that BOS and EOS exist and that each of the four BoLT special tokens maps to a single
id, and fails with a message naming the fix otherwise. Encoding goes through the Rust `tokenizers` backend
(`encode` never adds BOS/EOS; `encode_document` adds them, as the original's add_bos/add_eos). `categories` maps
formatted pieces (bolt_jax.data.formats) onto tokens through the character offsets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bolt_jax.data.formats import CATEGORY_IDS, SPECIAL, SPECIAL_TOKENS, Piece


class TokenizerError(ValueError):
    pass


@dataclass
class BoltTokenizer:
    """A HF tokenizer plus the ids BoLT needs. `hf` is the transformers tokenizer (for decode and chat use)."""

    hf: Any
    path: str
    bos_id: int = field(init=False)
    eos_id: int = field(init=False)
    special_ids: dict[str, int] = field(init=False)  # token string -> id, for the four BoLT tokens

    def __post_init__(self):
        self.backend = self.hf.backend_tokenizer
        self.bos_id, self.eos_id = self.hf.bos_token_id, self.hf.eos_token_id
        if self.bos_id is None or self.eos_id is None:
            raise TokenizerError(f"tokenizer at {self.path} has no BOS or EOS token (bos={self.bos_id}, "
                                 f"eos={self.eos_id}); every document is encoded as [BOS] text [EOS]")
        self.special_ids = {}
        for token in SPECIAL_TOKENS:
            ids = self.backend.encode(token, add_special_tokens=False).ids
            if len(ids) != 1:
                raise TokenizerError(
                    f"special token {token!r} is {len(ids)} tokens {ids} in the tokenizer at {self.path}, not one. "
                    "Add the four BoLT tokens: tokenizer.add_special_tokens({'additional_special_tokens': "
                    "list(bolt_jax.data.formats.SPECIAL_TOKENS)}) and save_pretrained (and resize the embeddings).")
            self.special_ids[token] = ids[0]
        self.all_special_ids = np.array(sorted({self.bos_id, self.eos_id, *self.special_ids.values(),
                                                *self.hf.all_special_ids}), np.int32)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def bos_text(self) -> str:
        return self.hf.bos_token

    @property
    def eos_text(self) -> str:
        return self.hf.eos_token

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings become their single ids; no BOS/EOS added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_document(self, pieces: Sequence[Piece]) -> tuple[np.ndarray, np.ndarray]:
        """[BOS] + tokens + [EOS] of the rendered pieces, and each token's category id (CATEGORY_IDS).

        A token's category is the kind of the piece its first character falls in; BOS, EOS and any special
        token id are "special" whatever piece they came from.
        """
        text = "".join(p.text for p in pieces)
        enc = self.backend.encode(text, add_special_tokens=False)
        n = len(enc.ids)
        tokens = np.empty(n + 2, np.int32)
        tokens[0], tokens[-1] = self.bos_id, self.eos_id
        tokens[1:-1] = enc.ids
        categories = np.full(n + 2, CATEGORY_IDS[SPECIAL], np.int8)
        if n:
            ends = np.cumsum([len(p.text) for p in pieces])
            kinds = np.array([CATEGORY_IDS[p.kind] for p in pieces], np.int8)
            starts = np.fromiter((o[0] for o in enc.offsets), np.int64, count=n)
            piece_of_token = np.minimum(np.searchsorted(ends, starts, side="right"), len(pieces) - 1)
            categories[1:-1] = kinds[piece_of_token]
            categories[1:-1][np.isin(tokens[1:-1], self.all_special_ids)] = CATEGORY_IDS[SPECIAL]
        return tokens, categories


def load_tokenizer(path: str | os.PathLike) -> BoltTokenizer:
    """Load a HF tokenizer directory (tokenizer.json + tokenizer_config.json) and check the BoLT tokens."""
    path = str(path)
    if not os.path.isdir(path):
        raise TokenizerError(f"tokenizer directory {path!r} does not exist (set data.tokenizer_path to a directory "
                             "written by save_pretrained, e.g. the model's HF checkpoint directory)")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(path)
    if not getattr(hf, "is_fast", True) or not hasattr(hf, "backend_tokenizer"):
        raise TokenizerError(f"tokenizer at {path} has no fast (tokenizers) backend; save it with tokenizer.json")
    return BoltTokenizer(hf=hf, path=path)


_CACHE: dict[str, BoltTokenizer] = {}
_CACHE_LOCK = threading.Lock()  # Grain's reader threads ask at once; transformers' first import is not thread-safe


def cached_tokenizer(path: str | os.PathLike) -> BoltTokenizer:
    """load_tokenizer, once per process and path (worker processes and repeated pipeline builds reuse it)."""
    key = os.path.abspath(str(path))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_tokenizer(key)
        return _CACHE[key]

