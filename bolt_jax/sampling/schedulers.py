"""`generate`: one interface over the two schedulers.

- `"static"` (`bolt_jax.sampling.sampler`): all requests decode as one batch until the longest is done. One compiled
  program, best when lengths are alike (greedy evaluation with short answers).
- `"continuous"` (`bolt_jax.sampling.engine`): `decode_slots` rows stay busy; a finished row's slot takes the next
  waiting sample between chunks of `steps_per_sync` steps. Best when lengths spread out (the E-step's thoughts at
  temperature 1). With `prefix_sharing` the n samples of a prompt read its KV once per step.

Both give the same samples for the same requests (each request's randomness comes from its own seed), so the choice
changes the speed, never the result.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from bolt_jax.model.llama import Llama
from bolt_jax.sampling import engine, sampler
from bolt_jax.sampling.sampler import DoneCallback, GenerationResult

SCHEDULERS = ("static", "continuous")


def generate(model: Llama, prompts: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int = 256,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_token_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
             banned_token_ids: Sequence[int] = (), max_prompt_len: int | None = None, seed: int = 0,
             prompt_seeds: Sequence[int] | None = None, mesh=None, tokenizer=None, batch_bucket: int = 8,
             max_cache_bytes: int | None = None, scheduler: str = "static", decode_slots: int | None = None,
             steps_per_sync: int = 16, on_done: DoneCallback | None = None, prefix_sharing: bool = False,
             prompt_entries: int | None = None) -> GenerationResult:
    """Samples `n` continuations per prompt; `result.stats` says how busy the rows were. `batch_bucket` is the
    static path's, `decode_slots` and `steps_per_sync` the continuous engine's (see the module docstring).
    `on_done(k)`, when given, is called from the host loop each time k more requests (prompt x sample) finish: after
    every continuous round that finished some, once for a static batch; the counts sum to len(prompts) * n. It
    observes only (for progress displays): the samples are the same with or without it. `prefix_sharing`
    (continuous only) keeps each prompt's KV once in one of `prompt_entries` shared entries (None: automatic) that
    all its samples read (`bolt_jax.sampling.engine`): the same samples up to float rounding, fewer bytes per step."""
    common = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  greedy=greedy, stop_token_ids=stop_token_ids, stop_strings=stop_strings,
                  banned_token_ids=banned_token_ids, max_prompt_len=max_prompt_len, seed=seed,
                  prompt_seeds=prompt_seeds, mesh=mesh, tokenizer=tokenizer, max_cache_bytes=max_cache_bytes,
                  on_done=on_done)
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r}; choose one of {SCHEDULERS}")
    _check_prompt_entries(prefix_sharing, prompt_entries)
    if scheduler == "static":
        if prefix_sharing:
            raise ValueError("prefix_sharing needs scheduler=\"continuous\" (a static batch copies each prompt)")
        return sampler.generate(model, prompts, batch_bucket=batch_bucket, **common)
    if not prompts:
        return sampler.generate(model, prompts, **common)
    _check_continuous(model, common, steps_per_sync, decode_slots)
    return engine.generate_continuous(model, prompts, decode_slots=decode_slots, steps_per_sync=steps_per_sync,
                                      prefix_sharing=prefix_sharing, prompt_entries=prompt_entries, **common)


def generate_stream(model: Llama, batches: Iterable[tuple[Any, Sequence[Sequence[int]], Sequence[int] | None]], *,
                    n: int = 1, max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, greedy: bool = False, stop_token_ids: Sequence[int] = (),
                    stop_strings: Sequence[str] = (), banned_token_ids: Sequence[int] = (),
                    max_prompt_len: int | None = None, seed: int = 0, mesh=None, tokenizer=None,
                    max_cache_bytes: int | None = None, decode_slots: int | None = None, steps_per_sync: int = 16,
                    on_done: DoneCallback | None = None, prefix_sharing: bool = False,
                    prompt_entries: int | None = None) -> Iterator[tuple[Any, GenerationResult]]:
    """`generate(..., scheduler="continuous")` over a stream of batches, each (key, prompts, prompt_seeds or None):
    yields (key, the GenerationResult `generate` would give that batch alone) in order. One engine serves them all,
    its slots taking the next batch's samples while a batch's longest samples finish, so the slots do not drain at
    every batch's end (the E-step's batches, `bolt_jax.estep.run`). `result.stats` are the stream's so far; the
    default `decode_slots` is sized for the first batch's prompts x n."""
    common = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                  greedy=greedy, stop_token_ids=stop_token_ids, stop_strings=stop_strings,
                  banned_token_ids=banned_token_ids, max_prompt_len=max_prompt_len, seed=seed, mesh=mesh,
                  tokenizer=tokenizer, max_cache_bytes=max_cache_bytes, on_done=on_done)
    _check_prompt_entries(prefix_sharing, prompt_entries)
    _check_continuous(model, common, steps_per_sync, decode_slots)
    batches = iter(batches)
    for key, prompts, seeds in batches:
        if not prompts:  # nothing to decode: the static path's empty result, in its place in the order
            yield key, sampler.generate(model, prompts, prompt_seeds=seeds, **common)
            continue
        yield from engine.generate_stream(
            model, itertools.chain([(key, prompts, seeds)], batches), decode_slots=decode_slots,
            steps_per_sync=steps_per_sync, prefix_sharing=prefix_sharing, prompt_entries=prompt_entries, **common)
        return


def _check_prompt_entries(prefix_sharing: bool, prompt_entries: int | None) -> None:
    if prompt_entries is not None and (prompt_entries < 1 or not prefix_sharing):
        raise ValueError(f"prompt_entries={prompt_entries} needs prefix_sharing=True and must be >= 1")


def _check_continuous(model: Llama, common: dict, steps_per_sync: int, decode_slots: int | None) -> None:
    if steps_per_sync < 1 or (decode_slots is not None and decode_slots < 1):
        raise ValueError(f"steps_per_sync={steps_per_sync} and decode_slots={decode_slots} must be >= 1")
    c = common
    sampler.check_sampling_args(c["n"], c["max_new_tokens"], c["stop_strings"], c["tokenizer"],
                                temperature=c["temperature"], top_k=c["top_k"], top_p=c["top_p"], greedy=c["greedy"],
                                stop_token_ids=c["stop_token_ids"], banned_token_ids=c["banned_token_ids"],
                                vocab_size=model.config.vocab_size)
