"""Text formats: how one (augmented) document becomes the string the model trains on (spec 4.1).

One function per format. Each returns a list of `Piece(text, kind)`, kind in {"text", "thought", "special"}; the
training string is `render(pieces)` ("".join of the texts) and the kinds give every token its loss category.

Formats (`latent_type`), per chunk {suffix, latent}:
  raw             the document's text (`text`, else `content`, else the suffixes joined)
  prior           <SoL><PRIOR> z <EoL> x                          (every chunk)
  posterior       <SoL><EoL> x <SoL><POSTERIOR> z <EoL>            (every chunk)
  random          prior or posterior per chunk, `rng.random() < 0.5` -> prior (the original's training format)
  prior_only      <SoL> z <EoL> x                                  (no <PRIOR> token, as the original)
  posterior_only  x <SoL> z <EoL>                                  (no <POSTERIOR> token, no empty-latent marker)
  pure            the record's `latent` (WRAP paraphrase); with `chunks`, their latents joined by EOS+BOS strings

E-step strings live here too: `posterior_prompt(prefix, suffix)` and `joint_text(prefix, latent, suffix)`.

A chunk whose `latent` is None (no thought was produced) is emitted as its suffix alone, as the original's
recombination does; an empty string "" is a real (empty) thought and is formatted (`<SoL><PRIOR><EoL>x`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SOL = "<|START_OF_LATENT|>"
EOL = "<|END_OF_LATENT|>"
PRIOR = "<|PRIOR_PREFIX|>"
POSTERIOR = "<|POSTERIOR_PREFIX|>"
SPECIAL_TOKENS = (SOL, EOL, PRIOR, POSTERIOR)  # the original's enum order: ids vocab, vocab+1, ... when appended

TEXT, THOUGHT, SPECIAL = "text", "thought", "special"
KINDS = (TEXT, THOUGHT, SPECIAL)
# Each token's category id in a packed batch (`categories`), for the trainer's per-category loss split;
# 0 = not a target (padding or masked).
CATEGORY_IDS = {TEXT: 1, THOUGHT: 2, SPECIAL: 3}


@dataclass(frozen=True)
class Piece:
    text: str
    kind: str  # TEXT | THOUGHT | SPECIAL


Pieces = list[Piece]


class FormatError(ValueError):
    """A record cannot be put in the requested format (e.g. no chunks for an augmented format)."""


def render(pieces: Sequence[Piece]) -> str:
    return "".join(p.text for p in pieces)


def raw_text(record: Mapping[str, Any]) -> str:
    """The original text of a record: `text`, else `content`, else its chunk suffixes joined."""
    for key in ("text", "content"):
        value = record.get(key)
        if isinstance(value, str):
            return value
    chunks = record.get("chunks")
    if chunks:
        return "".join(c["suffix"] for c in chunks)
    raise FormatError(f"record has no 'text', 'content' or 'chunks' (keys: {sorted(record)})")


def _chunks(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    chunks = record.get("chunks")
    if not chunks:
        raise FormatError("record has no 'chunks' (an augmented format needs a thought-augmented corpus; "
                          "set fall_back_to_raw=True to train on its raw text instead)")
    return chunks


def _add(pieces: Pieces, text: str, kind: str) -> None:
    if text:
        pieces.append(Piece(text, kind))


def prior_chunk(suffix: str, latent: str | None) -> Pieces:
    """<SoL><PRIOR> z <EoL> x: the thought before the text it explains; trains p(Z, X | prefix)."""
    if latent is None:
        return [Piece(suffix, TEXT)] if suffix else []
    out = [Piece(SOL, SPECIAL), Piece(PRIOR, SPECIAL)]
    _add(out, latent, THOUGHT)
    out.append(Piece(EOL, SPECIAL))
    _add(out, suffix, TEXT)
    return out


def posterior_chunk(suffix: str, latent: str | None) -> Pieces:
    """<SoL><EoL> x <SoL><POSTERIOR> z <EoL>: the thought after its text; trains q(Z | prefix, X)."""
    if latent is None:
        return [Piece(suffix, TEXT)] if suffix else []
    out = [Piece(SOL, SPECIAL), Piece(EOL, SPECIAL)]
    _add(out, suffix, TEXT)
    out += [Piece(SOL, SPECIAL), Piece(POSTERIOR, SPECIAL)]
    _add(out, latent, THOUGHT)
    out.append(Piece(EOL, SPECIAL))
    return out


def prior_only_chunk(suffix: str, latent: str | None) -> Pieces:
    """<SoL> z <EoL> x (no <PRIOR> token)."""
    if latent is None:
        return [Piece(suffix, TEXT)] if suffix else []
    out = [Piece(SOL, SPECIAL)]
    _add(out, latent, THOUGHT)
    out.append(Piece(EOL, SPECIAL))
    _add(out, suffix, TEXT)
    return out


def posterior_only_chunk(suffix: str, latent: str | None) -> Pieces:
    """x <SoL> z <EoL> (no <POSTERIOR> token, no empty-latent marker)."""
    if latent is None:
        return [Piece(suffix, TEXT)] if suffix else []
    out: Pieces = []
    _add(out, suffix, TEXT)
    out.append(Piece(SOL, SPECIAL))
    _add(out, latent, THOUGHT)
    out.append(Piece(EOL, SPECIAL))
    return out


def format_raw(record: Mapping[str, Any], rng: np.random.Generator | None = None) -> Pieces:
    text = raw_text(record)
    return [Piece(text, TEXT)] if text else []


def _per_chunk(chunk_fn: Callable[[str, str | None], Pieces]):
    def fmt(record: Mapping[str, Any], rng: np.random.Generator | None = None) -> Pieces:
        out: Pieces = []
        for c in _chunks(record):
            out += chunk_fn(c["suffix"], c.get("latent"))
        return out
    fmt.__doc__ = f"Every chunk as {chunk_fn.__name__}."
    return fmt


format_prior = _per_chunk(prior_chunk)
format_posterior = _per_chunk(posterior_chunk)
format_prior_only = _per_chunk(prior_only_chunk)
format_posterior_only = _per_chunk(posterior_only_chunk)


def format_random(record: Mapping[str, Any], rng: np.random.Generator | None = None) -> Pieces:
    """Per chunk a coin flip: `rng.random() < 0.5` -> prior, else posterior (one draw per chunk, in order)."""
    if rng is None:
        raise ValueError("format 'random' needs an rng (one coin flip per chunk)")
    out: Pieces = []
    for c in _chunks(record):
        is_prior = rng.random() < 0.5
        out += (prior_chunk if is_prior else posterior_chunk)(c["suffix"], c.get("latent"))
    return out


def format_pure(record: Mapping[str, Any], rng: np.random.Generator | None = None, *, bos: str = "<s>",
                eos: str = "</s>") -> Pieces:
    """WRAP: the paraphrase alone, as text. With `chunks`, their latents joined by the EOS then BOS strings."""
    latent = record.get("latent")
    if isinstance(latent, str):
        return [Piece(latent, TEXT)] if latent else []
    chunks = record.get("chunks")
    if not chunks:
        raise FormatError("format 'pure' needs a record with 'latent' (a paraphrase) or 'chunks' with latents")
    out: Pieces = []
    for i, c in enumerate(chunks):
        if i:
            out += [Piece(eos, SPECIAL), Piece(bos, SPECIAL)]
        _add(out, c.get("latent") or "", TEXT)
    return out


FORMATS: dict[str, Callable[..., Pieces]] = {
    "raw": format_raw, "prior": format_prior, "posterior": format_posterior, "random": format_random,
    "prior_only": format_prior_only, "posterior_only": format_posterior_only, "pure": format_pure,
}


def format_document(record: Mapping[str, Any], latent_type: str, rng: np.random.Generator, *,
                    mix_in_raw_ratio: float = 0.0, fall_back_to_raw: bool = False, bos: str = "<s>",
                    eos: str = "</s>") -> Pieces:
    """One document in `latent_type` (None or "raw" for plain text).

    Draw order per document (so it is reproducible): the raw-mix draw `rng.random() < mix_in_raw_ratio` first
    (only when the ratio is > 0), then the format's own draws (one per chunk for 'random').
    """
    latent_type = latent_type or "raw"
    if latent_type not in FORMATS:
        raise ValueError(f"unknown latent_type {latent_type!r}; choose one of {sorted(FORMATS)}")
    if not 0.0 <= mix_in_raw_ratio <= 1.0:
        raise ValueError(f"mix_in_raw_ratio must be in [0, 1], got {mix_in_raw_ratio}")
    if latent_type != "raw" and mix_in_raw_ratio > 0 and rng.random() < mix_in_raw_ratio:
        return format_raw(record)
    try:
        if latent_type == "pure":
            return format_pure(record, rng, bos=bos, eos=eos)
        return FORMATS[latent_type](record, rng)
    except FormatError:
        if fall_back_to_raw:
            return format_raw(record)
        raise


# ---- E-step strings (spec 5.2, 5.3): the same tokens as training, kept next to the training formats ---------


def is_first_chunk(prefix: str) -> bool:
    return prefix in ("", "N/A")


def posterior_prompt(prefix: str, suffix: str) -> str:
    """The E-step's posterior sampling prompt: `[prefix <SoL><EoL>] suffix <SoL><POSTERIOR>` (no <SoL><EoL> for
    the first chunk, as the original). The sampler stops at <EoL>; the tokenizer's BOS goes in front."""
    if is_first_chunk(prefix):
        return f"{suffix}{SOL}{POSTERIOR}"
    return f"{prefix}{SOL}{EOL}{suffix}{SOL}{POSTERIOR}"


def joint_text(prefix: str, latent: str, suffix: str) -> tuple[str, str]:
    """(context, scored): the joint sequence is context + scored = `prefix <SoL><PRIOR> z <EoL> suffix`; the E-step
    sums log p over the tokens of `scored` given `context` (prefix "" for the first chunk). The original also left
    the <SoL> token out of the sum (spec 11.2); here it is in `scored`, and callers that want the original's
    number drop the first scored token."""
    context = "" if is_first_chunk(prefix) else prefix
    return context, f"{SOL}{PRIOR}{latent}{EOL}{suffix}"
