"""What the compiler's errors say: a program refused for memory is a result to report (or to choose around), not a
bug."""

from __future__ import annotations

import re


class DoesNotFit(MemoryError):
    """A KV cache or a compiled program the device's memory cannot hold: the user's settings to lower, told in one
    line without a traceback (bolt_jax.main)."""


def does_not_fit(error: Exception) -> str | None:
    """The compiler's own words when it refused a program for memory (TPU: CompileTimeHbmOom), else None."""
    text = str(error)
    if not any(k in text for k in ("RESOURCE_EXHAUSTED", "HbmOom", "Ran out of memory")):
        return None
    m = (re.search(r"CompileTimeHbmOom:\s*(.*?)(?:\s*HLO module|\n|$)", text)
         or re.search(r"RESOURCE_EXHAUSTED:\s*(.*?)(?:\n|$)", text))
    return (m.group(1) if m else text.splitlines()[0]).strip().rstrip(".")
