"""The E-step result store: atomic shards of finished chunks, keyed by (run, iteration, settings, chunk, sample).

Layout: `<store>/<run>/iter_<n>/<settings hash>/shards/slice_<i>_of_<n>/batch_<b>.jsonl`, one line per chunk with all
K samples, their scores and the choice. A shard is written to a temporary file and renamed, so it is either complete
or absent: a killed E-step restarts, skips every chunk found in a shard, and never spends a sample twice. The
resolved settings (model, sampling, lengths, K, accounting, seed) are in `settings.json` next to the shards and in
the hash, so changing any of them starts a new, separate set of results instead of mixing them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from bolt_jax.runtime.atomic import atomic_write_text


def settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ResultStore:
    def __init__(self, root: str, *, run: str, iteration: int, settings: Mapping[str, Any]):
        self.settings = dict(settings)
        self.key = settings_hash(self.settings)
        self.dir = os.path.join(os.path.abspath(root), run, f"iter_{iteration}", self.key)
        os.makedirs(os.path.join(self.dir, "shards"), exist_ok=True)
        path = os.path.join(self.dir, "settings.json")
        if not os.path.exists(path):
            atomic_write_text(path, json.dumps(self.settings, indent=2, sort_keys=True, default=str))

    def _slice_dir(self, slice_index: int, num_slices: int) -> str:
        d = os.path.join(self.dir, "shards", f"slice_{slice_index:05d}_of_{num_slices:05d}")
        os.makedirs(d, exist_ok=True)
        return d

    def shard_path(self, slice_index: int, num_slices: int, batch_index: int) -> str:
        return os.path.join(self._slice_dir(slice_index, num_slices), f"batch_{batch_index:07d}.jsonl")

    def has_batch(self, slice_index: int, num_slices: int, batch_index: int) -> bool:
        return os.path.exists(self.shard_path(slice_index, num_slices, batch_index))

    def write_batch(self, slice_index: int, num_slices: int, batch_index: int, rows: list[Mapping[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_text(self.shard_path(slice_index, num_slices, batch_index), text)

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every stored chunk result (all slices), in no particular order."""
        for path in sorted(glob.glob(os.path.join(self.dir, "shards", "*", "batch_*.jsonl"))):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)
