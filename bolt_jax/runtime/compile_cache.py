"""JAX's persistent compilation cache for workflows whose stages compile the same programs again.

Why: the EM loop's stages each build their own trainer or sampler (every train stage has the same step, every
evaluation the same sampler), so each would compile again what an earlier stage compiled; with the cache a later
stage loads it. The key is the program, its compile options and the jax/XLA versions, so an entry is only ever
reused for the same program: nothing computed under other settings is reused.

Scoped, not global: JAX builds its cache object at the first compile after a directory is set and keeps it, so a
second run in the same process (a test session, a sweep) would write into the first run's directory; the context
resets it on entry and on exit (`reset_cache`) and restores the settings it found. A process that goes on to compile
other programs (an ahead-of-time compile for a chip it cannot load programs for, whose cache reads fail) does not
read or write the run's cache afterwards (tests/test_compile_cache.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

MIN_COMPILE_SECONDS = 0.5  # programs that compile faster are not worth a file
_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")


@contextlib.contextmanager
def persistent_compilation_cache(cache_dir: str) -> Iterator[None]:
    """Compiles inside the context read and write JAX's persistent compilation cache in `cache_dir` (created)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    os.makedirs(cache_dir, exist_ok=True)
    before = {name: getattr(jax.config, name) for name in _OPTIONS}
    values = dict(zip(_OPTIONS, (cache_dir, MIN_COMPILE_SECONDS, 0)))
    for name, value in values.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
