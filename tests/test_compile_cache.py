"""bolt_jax.runtime.compile_cache: the EM workflows' persistent compilation cache is written inside its context (also
when this process compiled before), not after it, and a second run in the process gets its own directory (JAX keeps
the cache object it built first)."""

import jax
import jax.numpy as jnp

from bolt_jax.runtime import compile_cache


def _entries(directory) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def test_cache_is_written_inside_the_context_only(tmp_path, monkeypatch):
    monkeypatch.setattr(compile_cache, "MIN_COMPILE_SECONDS", 0.0)  # tiny programs compile in milliseconds
    jax.jit(lambda x: x - 1)(jnp.ones(3)).block_until_ready()  # this process has compiled before the run
    before = jax.config.jax_compilation_cache_dir
    cache = tmp_path / "xla_cache"
    with compile_cache.persistent_compilation_cache(str(cache)):
        jax.jit(lambda x: x * 3 + 1)(jnp.ones(5)).block_until_ready()
        written = _entries(cache)
        assert any(name.startswith("jit__lambda") for name in written), written
    assert jax.config.jax_compilation_cache_dir == before
    jax.jit(lambda x: x * 5 - 2)(jnp.ones(7)).block_until_ready()
    assert _entries(cache) == written  # the context is over: nothing more goes into the run's cache


def test_a_second_run_in_the_process_writes_its_own_cache(tmp_path, monkeypatch):
    """Two runs in one process (a test session, a sweep): JAX keeps the cache object it built at the first compile
    after a directory was set, so without a reset the second run's programs would go to the first run's cache."""
    monkeypatch.setattr(compile_cache, "MIN_COMPILE_SECONDS", 0.0)
    first, second = tmp_path / "first", tmp_path / "second"
    with compile_cache.persistent_compilation_cache(str(first)):
        jax.jit(lambda x: x * 7 + 2)(jnp.ones(4)).block_until_ready()
    with compile_cache.persistent_compilation_cache(str(second)):
        jax.jit(lambda x: x * 11 - 3)(jnp.ones(6)).block_until_ready()
    for cache in (first, second):
        assert sum(name.startswith("jit__lambda") for name in _entries(cache)) == 1, _entries(cache)
