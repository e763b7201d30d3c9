"""Documents -> sentence units -> chunks -> (prefix, suffix) pairs, exactly as the original (spec 2.5).

Used by the API thought synthesis (previous 1 chunk as prefix), the E-step (previous 3 chunks) and the ELBO
evaluation (uniform chunks, all preceding text). Chunk sizes count *units* (sentences by default):

- paragraphs: regex `[^\\n\\r].*?(?:\\n\\s*\\n|\\s*$)` (DOTALL);
- sentences: an *untrained* nltk PunktSentenceTokenizer per paragraph; unit k = paragraph[last_end:end_k], so the
  whitespace between sentences starts the next unit, and trailing text joins the last unit;
- random lengths: rng = default_rng((int(md5(text).hexdigest(), 16) + chunk_seed) & 0xFFFFFFFF), then
  len = min(poisson(avg - min) + min, max, remaining) until the units are used up;
- uniform lengths (ELBO): ceil(units / avg) chunks, boundaries linspace(0, units, n + 1).astype(int).

Robust where the original crashes or loses text (spec 11.16): a whitespace-only paragraph (no punkt spans) joins
the previous unit instead of raising IndexError; newlines the paragraph regex skips (e.g. at the start of a
document) start the next unit instead of being dropped; an empty document has no chunks. The units always
concatenate back to the document, and the number of units (hence every boundary) is the original's.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PARAGRAPH_RE = re.compile(r"[^\n\r].*?(?:\n\s*\n|\s*$)", re.DOTALL)
WORD_RE = re.compile(r"\s*\S+")
FIRST_PREFIX = "N/A"  # the prefix of a document's first chunk, literally (the original's)


@dataclass(frozen=True)
class ChunkingConfig:
    """How to cut a document. Defaults: the API latent-thought setting (configs/gen/gpt_latent_thoughts.yaml)."""

    split_mode: str = "sentence"  # sentence | paragraph | word
    units_per_chunk: int | None = 8  # average units per chunk; None: total_units // num_chunks
    num_chunks: int | None = None  # only used when units_per_chunk is None
    min_units_per_chunk: int = 1
    max_units_per_chunk: int = 20
    random_chunking: bool = True  # False: uniform chunks (the ELBO evaluation)
    num_prefix_chunks: int = 1  # P: the prefix is the previous P chunks (E-step: 3)
    include_all_prefix: bool = False  # True: the prefix is all preceding text (the ELBO evaluation)
    chunk_seed: int = 42

    @classmethod
    def synth(cls, **kw) -> ChunkingConfig:
        return cls(**kw)

    @classmethod
    def estep(cls, **kw) -> ChunkingConfig:
        return cls(**{"num_prefix_chunks": 3, **kw})

    @classmethod
    def elbo(cls, **kw) -> ChunkingConfig:
        return cls(**{"random_chunking": False, "include_all_prefix": True, **kw})


@dataclass(frozen=True)
class ChunkPair:
    index: int  # chunk index in its document
    prefix: str  # "N/A" for the first chunk
    suffix: str


@lru_cache(maxsize=1)
def _punkt():
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer()  # untrained, default parameters: the original's splitter


def paragraphs_with_gaps(text: str) -> list[tuple[str, str]]:
    """(skipped, paragraph) pairs: each paragraph as the original's regex finds it, with the newlines the regex
    skipped before it (the original drops them). A final ("\n...", "") pair holds trailing skipped text."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in PARAGRAPH_RE.finditer(text):
        if m.end() == m.start():
            continue
        out.append((text[pos:m.start()], m.group()))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], ""))
    return out


def split_paragraphs(text: str) -> list[str]:
    """Paragraph strings that concatenate back to `text` (skipped newlines start the next paragraph)."""
    out = [gap + para for gap, para in paragraphs_with_gaps(text)]
    if len(out) > 1 and not paragraphs_with_gaps(text)[-1][1]:
        out[-2] += out.pop()
    return out


def split_sentences(paragraph: str) -> list[str]:
    """Sentence units of one paragraph; [] when punkt finds no sentence (whitespace only)."""
    units: list[str] = []
    last_end = 0
    for _, end in _punkt().span_tokenize(paragraph):
        units.append(paragraph[last_end:end])
        last_end = end
    if units and last_end < len(paragraph):
        units[-1] += paragraph[last_end:]
    return units


SPLIT_MODES = ("sentence", "paragraph", "word")


def split_units(text: str, split_mode: str = "sentence") -> list[str]:
    """The document's units; "".join(units) == text for every mode."""
    if split_mode == "word":
        units = WORD_RE.findall(text)
        covered = sum(map(len, units))
        if units and covered < len(text):
            units[-1] += text[covered:]
        return units if units or not text else [text]
    if split_mode not in SPLIT_MODES:
        raise ValueError(f"unknown split_mode {split_mode!r}; choose sentence, paragraph or word")
    units: list[str] = []
    pending = ""  # text with no sentence of its own, waiting for the next unit
    for gap, paragraph in paragraphs_with_gaps(text):
        # the original's units of the paragraph (punkt sees exactly what it saw), skipped newlines kept
        pieces = [paragraph] if split_mode == "paragraph" else split_sentences(paragraph)
        if not pieces or not paragraph.strip():
            if units:
                units[-1] += gap + paragraph
            else:
                pending += gap + paragraph
            continue
        pieces[0] = pending + gap + pieces[0]
        pending = ""
        units += pieces
    if pending:
        units.append(pending)
    return units


def chunk_rng_seed(text: str, chunk_seed: int) -> int:
    return (int(hashlib.md5(text.encode()).hexdigest(), 16) + chunk_seed) & 0xFFFFFFFF


def random_chunk_lengths(text: str, total_units: int, avg: int, min_units: int, max_units: int,
                         chunk_seed: int) -> list[int]:
    """Poisson(avg - min) + min units per chunk, capped at max and at what remains; RNG seeded from md5(text)."""
    if not 0 < min_units < avg:
        raise ValueError(f"need 0 < min_units_per_chunk ({min_units}) < units_per_chunk ({avg})")
    rng = np.random.default_rng(chunk_rng_seed(text, chunk_seed))
    lengths, remaining = [], total_units
    while remaining > 0:
        n = int(rng.poisson(avg - min_units)) + min_units
        n = min(n, max_units, remaining)
        lengths.append(n)
        remaining -= n
    return lengths


def chunk_boundaries(text: str, total_units: int, cfg: ChunkingConfig) -> list[int]:
    """[0, b_1, ..., total_units]; [0] for a document without units."""
    if total_units == 0:
        return [0]
    if cfg.units_per_chunk is None:
        if not cfg.num_chunks:
            raise ValueError("units_per_chunk is None, so num_chunks must be set")
        avg = max(cfg.min_units_per_chunk, total_units // cfg.num_chunks)
    else:
        avg = cfg.units_per_chunk
    if cfg.random_chunking:
        lengths = random_chunk_lengths(text, total_units, avg, cfg.min_units_per_chunk, cfg.max_units_per_chunk,
                                       cfg.chunk_seed)
        return [0] + np.cumsum(lengths).astype(int).tolist()
    num_chunks = math.ceil(total_units / avg)
    return np.linspace(0, total_units, num_chunks + 1).astype(int).tolist()


def chunk_text(text: str, cfg: ChunkingConfig = ChunkingConfig()) -> list[ChunkPair]:
    """(prefix, suffix) pairs of one document, in order; [] for an empty document."""
    units = split_units(text, cfg.split_mode)
    bounds = chunk_boundaries(text, len(units), cfg)
    pairs = []
    for i in range(len(bounds) - 1):
        suffix = "".join(units[bounds[i]:bounds[i + 1]])
        if i == 0:
            prefix = FIRST_PREFIX
        elif cfg.include_all_prefix:
            prefix = "".join(units[:bounds[i]])
        else:
            prefix = "".join(units[bounds[max(0, i - cfg.num_prefix_chunks)]:bounds[i]])
        pairs.append(ChunkPair(i, prefix, suffix))
    return pairs
