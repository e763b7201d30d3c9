"""Record schemas (spec 2.6) and atomic JSONL writing.

- raw record:        {"text" (or "content"), "id", "metadata", ...}; only text/content is read.
- augmented record:  the raw record plus
                       "num_chunks": int,
                       "combined_text_latent": concat over chunks of <SoL> latent <EoL> suffix (suffix alone when
                                               the chunk has no latent),
                       "chunks": [{"suffix": str, "latent": str | None, ...optional per-chunk fields such as
                                   "num_suffix_token_truncated", "log_importance_weight", "elbo_1"}].
                     The prefix is not stored: it is always the previous suffixes.
- WRAP record:       the raw record plus "latent" (the paraphrase).

`augment_record` builds an augmented record; `write_jsonl` writes records atomically (bolt_jax.runtime.atomic);
`read_jsonl` (bolt_jax.data.readers) reads them back with malformed lines counted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bolt_jax.data.formats import EOL, SOL
from bolt_jax.runtime.atomic import atomic_file


def combined_text_latent(chunks: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for c in chunks:
        latent = c.get("latent")
        parts.append(c["suffix"] if latent is None else f"{SOL}{latent}{EOL}{c['suffix']}")
    return "".join(parts)


def augment_record(record: Mapping[str, Any], chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The raw record plus num_chunks, combined_text_latent and chunks (each with at least suffix and latent)."""
    out_chunks = []
    for i, c in enumerate(chunks):
        if not isinstance(c.get("suffix"), str):
            raise ValueError(f"chunk {i} has no string 'suffix': {c!r}")
        latent = c.get("latent")
        if latent is not None and not isinstance(latent, str):
            raise ValueError(f"chunk {i} has a non-string 'latent': {latent!r}")
        out_chunks.append({**c, "suffix": c["suffix"], "latent": latent})
    out = dict(record)
    out.update(num_chunks=len(out_chunks), combined_text_latent=combined_text_latent(out_chunks), chunks=out_chunks)
    return out


def validate_augmented(record: Mapping[str, Any]) -> str | None:
    """None if `record` is a well-formed augmented record, else why not."""
    chunks = record.get("chunks")
    if not isinstance(chunks, list):
        return "'chunks' is not a list"
    for i, c in enumerate(chunks):
        if not isinstance(c, dict) or not isinstance(c.get("suffix"), str):
            return f"chunk {i} has no string 'suffix'"
        if c.get("latent") is not None and not isinstance(c["latent"], str):
            return f"chunk {i} has a non-string 'latent'"
    return None


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object a line, atomically; returns the number written."""
    n = 0
    with atomic_file(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False))
            f.write("\n")
            n += 1
    return n
