"""Progress over tensors and the closing summary line of `python -m convert`.

A TinyLlama conversion reads and places ~200 tensors for minutes with nothing on the console, and the command ended
with "wrote PATH": no sign it was moving, nor of how much it moved. Both directions now show a bar over tensors (plain
`n/total | rate | ETA` lines in a file; `bolt_jax.runtime.console.progress`) and count what they converted in a
`ConvertStats`, which the command turns into "converted N tensors (X GB) in T s -> PATH".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConvertStats:
    """What a conversion moved: tensors in the Hugging Face layout (one per layer and weight) and their bytes in the
    written dtype. Filled by the conversion functions when a caller passes one; zero when the output already existed
    (a rerun converts nothing)."""
    tensors: int = 0
    nbytes: int = 0

    def add(self, array: np.ndarray) -> None:
        self.tensors += 1
        self.nbytes += int(array.nbytes)


def tensor_progress(total: int, desc: str):
    """A progress display over `total` tensors on the primary process only (every process walks the same tensors,
    so the others would print copies)."""
    import jax

    from bolt_jax.runtime import console
    return console.progress(total=total, desc=desc, unit="tensor", enabled=jax.process_index() == 0)


def format_bytes(nbytes: int) -> str:
    """Decimal units, about three digits: `262 kB`, `12.3 MB`, `4.40 GB` (a model's size as disks and hubs state it)."""
    if nbytes < 1000:
        return f"{nbytes} B"
    size, units = nbytes / 1000, ["kB", "MB", "GB", "TB"]
    while size >= 1000 and len(units) > 1:
        size, units = size / 1000, units[1:]
    unit = units[0]
    return f"{size:.2f} {unit}" if size < 10 else f"{size:.1f} {unit}" if size < 100 else f"{size:.0f} {unit}"


def summary_line(stats: ConvertStats, seconds: float, out: str) -> str:
    """The command's last line: what was converted, how long it took and where it went."""
    if not stats.tensors:
        return f"nothing to convert: {out} is already complete (--overwrite to redo it)"
    return f"converted {stats.tensors} tensors ({format_bytes(stats.nbytes)}) in {seconds:.1f} s -> {out}"
