"""Continuous batching: a fixed set of decode slots on the mesh; when a row finishes, its slot takes the next sample.

With temperature 1 the E-step's thoughts range from a few tokens to `max_new_tokens`, so a static batch decodes
until its longest row is done while most rows idle. Here, as in JetStream (prefill / insert / generate) and vLLM:

- **prefill**: a group of prompts runs through the model once (the training attention kernel); its KV rows and
  last logits stay on the device in a *pool* until every one of the prompt's n samples has been inserted, so the n
  samples share one prefill;
- **insert**: one sample of a pooled prompt into a free slot: its KV rows (the slot's whole cache row is rewritten,
  so nothing of an earlier occupant survives), its first token from the prefill's logits, its key;
- **decode**: a chunk of `steps_per_sync` steps over all slots; each slot writes its own cache position;
- the **host** keeps the queue, refills finished slots between chunks, checks stop strings, and returns results per
  request, in the same order and form as the static path.

**Prefix sharing** (`prompt_entries > 0`): the n samples of a prompt read its KV once per step instead of n times.
The prompts' KV then lives in `prompt_entries` shared *entries* [E, P, K * D] and each slot's own cache holds only its
generated tokens; a step attends each entry's prompt with the queries of all its member slots in one block
(`kernels.decode_attention` with Q = n queries per entry), attends each slot's own tokens separately, and merges the
two by their log-sum-exps (`decode.merge_attention`). A prompt holds its entry until its last sample finishes; a
free slot whose next sample's prompt has no entry waits for one (fewer entries: fewer bytes per step, more waiting).

Every device function has fixed shapes (slots, prompt bucket, cache length, prefill group), so requests come and go
without recompiling; they live in `bolt_jax.sampling.slots` (the slot state, and the programs that keep it in one
layout), this module is the host's side.

Determinism: sample j of prompt i draws token t from fold_in(fold_in(key_i, j), t), as the static path does
(`sampler._row_keys`), and the prompt sits at the same cache positions (left-padded to the same bucket), so a
request's tokens and log q depend on its seed alone, never on its slot, its neighbours or the schedule.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bolt_jax import parallel
from bolt_jax.model.llama import Llama, pure_dict
from bolt_jax.sampling.sampler import (
    DoneCallback,
    _bucket,
    _finish_row,
    _left_pad,
    _null,
    _place,
    _prompt_keys,
    _to_host,
    _truncate_prompts,
    check_cache_fits,
)
from bolt_jax.sampling.slots import Programs, Settings, SlotState, prefill_group, programs

# ---------------------------------------------------------------------------------------------- on the host
_MAX_WAITING_POOLS = 2  # prefilled groups held while their samples wait (prefix sharing: for their prompts' device)


@dataclass
class _Pool:
    """A prefilled group on the device and the samples of its prompts not yet inserted: [(prompt, sample)]."""
    arrays: tuple
    prompt_ids: list[int]
    waiting: collections.deque = field(default_factory=collections.deque)


class _Entries:
    """Prefix sharing's host bookkeeping: which prompt holds which entry, which slots read it (at which member
    place), and how many of its samples are unfinished (the entry frees when none are).

    Slots and entries are split over `shards` batch devices in equal contiguous blocks; a prompt's entry and every
    slot that reads it sit on one device, so the tables the device reads hold indices within a shard: members_ExM
    the member slots' (slots / shards = nobody), entry_S the slot's entry's."""

    def __init__(self, entries: int, members: int, slots: int, shards: int):
        self.entries_per_shard, self.slots_per_shard = entries // shards, slots // shards
        self.free = [list(range(c * self.entries_per_shard, (c + 1) * self.entries_per_shard)) for c in range(shards)]
        self.of_prompt: dict[int, int] = {}
        self.unfinished: dict[int, int] = {}
        self.members_ExM = np.full((entries, members), self.slots_per_shard, np.int32)
        self.entry_S = np.zeros((slots,), np.int32)
        self.member_S = np.zeros((slots,), np.int32)

    def shard_of(self, prompt: int) -> int | None:
        entry = self.of_prompt.get(prompt)
        return None if entry is None else entry // self.entries_per_shard

    def admit(self, prompt: int, n: int, free_by_shard: list[list[int]]) -> tuple[int, int, bool] | None:
        """(shard, entry, whether the entry is new: the prompt's KV must be copied in) for the prompt's next sample,
        or None when it cannot start now: its shard has no free slot, or (a new prompt) no shard has both a free
        entry and a free slot. A new prompt goes to the shard with the most free slots."""
        shard = self.shard_of(prompt)
        if shard is not None:
            return (shard, self.of_prompt[prompt], False) if free_by_shard[shard] else None
        open_ = self._open_shards(free_by_shard)
        if not open_:
            return None
        shard = max(open_, key=lambda c: len(free_by_shard[c]))
        entry = self.free[shard].pop(0)
        self.of_prompt[prompt], self.unfinished[entry] = entry, n
        return shard, entry, True

    def can_admit_new(self, free_by_shard: list[list[int]]) -> bool:
        return bool(self._open_shards(free_by_shard))

    def _open_shards(self, free_by_shard: list[list[int]]) -> list[int]:
        """The devices with both a free slot and a free entry: where a new prompt can start."""
        return [c for c, slots in enumerate(free_by_shard) if slots and self.free[c]]

    def join(self, slot: int, entry: int) -> None:
        local = entry % self.entries_per_shard
        place = int(np.flatnonzero(self.members_ExM[entry] == self.slots_per_shard)[0])
        self.members_ExM[entry, place] = slot % self.slots_per_shard
        self.entry_S[slot], self.member_S[slot] = local, place

    def leave(self, slot: int, prompt: int) -> None:
        """The slot's sample finished: it stops reading the entry, which frees after the prompt's last sample."""
        entry = self.of_prompt[prompt]
        self.members_ExM[entry, self.member_S[slot]] = self.slots_per_shard
        self.unfinished[entry] -= 1
        if self.unfinished[entry] == 0:
            del self.unfinished[entry], self.of_prompt[prompt]
            self.free[entry // self.entries_per_shard].append(entry)


@dataclass
class EngineStats:
    decode_steps: int = 0
    slot_steps: int = 0  # decode_steps x slots
    useful_slot_steps: int = 0  # slot-steps that decoded a live request
    prefills: int = 0
    inserts: int = 0
    entry_waits: int = 0  # prefix sharing: fills that left a slot idle because every prompt entry was taken

    @property
    def occupancy(self) -> float:
        """The share of slot-steps that did useful work."""
        return self.useful_slot_steps / self.slot_steps if self.slot_steps else 0.0


class ContinuousEngine:
    """Runs a list of requests (prompt i, sample j) through the decode slots; see the module docstring."""

    def __init__(self, model: Llama, settings: Settings, mesh=None, max_cache_bytes: int | None = None):
        self.graphdef, state = nnx.split(model)
        self.params = pure_dict(state)
        self.cfg, self.s, self.mesh, self.max_cache_bytes = model.config, settings, mesh, max_cache_bytes
        self._useful_before = 0  # useful slot-steps of the slot states before the current one (bucket changes)
        self.stats = EngineStats()
        self.entries: _Entries | None = None
        self.programs: Programs | None = None  # compiled for the current settings when the slots start

    def run(self, prompts: list[list[int]], keys_Px2: np.ndarray, *, n: int, stop_check=None,
            on_done: DoneCallback | None = None) -> dict:
        """{(prompt, sample): (tokens, log q, done by a stop token)} for every request. `stop_check(tokens)` (host)
        ends a request early, e.g. on a stop string; the static path would cut the same tokens afterwards.
        `on_done(k)` is told after each chunk that k more requests finished (never with 0): it runs after `_collect`
        has read the slots, so it costs no device sync of its own."""
        for _, results in self.stream([(None, prompts, keys_Px2)], n=n, stop_check=stop_check, on_done=on_done):
            return results
        return {}

    def stream(self, batches: Iterable[tuple[Any, list[list[int]], np.ndarray]], *, n: int, stop_check=None,
               on_done: DoneCallback | None = None) -> Iterator[tuple[Any, dict]]:
        """`run` over a stream of (key, prompts, keys [P, 2]) batches through one set of slots: yields (key, results
        as `run`'s) per batch, in order, as each batch's last request finishes. The next batch is taken in while
        fewer requests wait than there are slots, so slots freed by one batch's long tail take the next batch's
        samples instead of idling until the batch is done (a call per batch drains the slots at its end).

        A batch whose longest prompt does not fit the prompt bucket waits until the slots drain, and the engine
        starts again with a bucket that holds it (`Settings.prompt_len`; one more compile)."""
        s = self.s
        if s.sharing and n != s.samples_per_prompt:
            raise ValueError(f"the engine shares prompts among {s.samples_per_prompt} samples; run asked n={n}")
        prompts: list[list[int]] = []  # every batch taken in so far, end to end: request (i, j) is prompt i's sample j
        keys: list[np.ndarray] = []
        spans: collections.deque = collections.deque()  # (key, first prompt, end) of the batches not yet yielded
        queue: collections.deque = collections.deque()
        pools: list[_Pool] = []
        results: dict[tuple[int, int], tuple[list[int], np.ndarray, bool]] = {}
        batches = iter(batches)
        held = None  # a batch that needs a larger prompt bucket, taken in once the slots drain
        owner: list[tuple[int, int] | None] = []
        state = None

        def take(batch) -> None:
            key, batch_prompts, batch_keys = batch
            spans.append((key, len(prompts), len(prompts) + len(batch_prompts)))
            queue.extend(range(len(prompts), len(prompts) + len(batch_prompts)))
            prompts.extend(batch_prompts)
            keys.extend(np.asarray(batch_keys, np.uint32).reshape(len(batch_prompts), 2))

        def waiting() -> int:
            return len(queue) * n + sum(len(p.waiting) for p in pools)

        while True:
            busy = any(o is not None for o in owner)
            if held is not None and not busy and not waiting():
                self._useful_before = self.stats.useful_slot_steps  # the next state counts from zero
                state, owner = None, []  # freed before the memory check of the larger bucket
                self._start_bucket(max(len(p) for p in held[1]))
                take(held)
                held = None
            while held is None and waiting() < self.s.slots:
                batch = next(batches, None)
                if batch is None:
                    break
                if batch[1] and max(len(p) for p in batch[1]) > self.s.prompt_len:
                    held = batch
                    break
                take(batch)
            while spans and all((i, j) in results for i in range(spans[0][1], spans[0][2]) for j in range(n)):
                key, first, end = spans.popleft()
                yield key, {(i - first, j): results.pop((i, j)) for i in range(first, end) for j in range(n)}
            if not spans and held is None:
                break
            if not queue and not busy and not any(p.waiting for p in pools):
                continue  # only the held batch is left: the loop above starts it
            if state is None:
                state, owner = self._start(n), [None] * self.s.slots
            state = self._fill(state, prompts, keys, queue, pools, owner, n)
            state, steps = self.programs.decode(self.params, state)
            steps, useful = (int(x) for x in _to_host(jnp.stack([steps, state.useful_steps])))
            self.stats.decode_steps += steps
            self.stats.slot_steps += steps * self.s.slots
            self.stats.useful_slot_steps = self._useful_before + useful
            finished = len(results)
            state = self._collect(state, owner, results, stop_check)
            if on_done is not None and len(results) > finished:
                on_done(len(results) - finished)

    def _start(self, n: int) -> SlotState:
        """Empty slots (and prompt entries) for the current settings."""
        s = self.s
        if s.sharing:
            self.entries = _Entries(s.prompt_entries, n, s.slots, s.shards)
        self.programs = programs(self.graphdef, self.params, s)
        return self.programs.init(self.params)

    def _start_bucket(self, longest_prompt: int) -> None:
        """Settings with a prompt bucket for `longest_prompt`, checked against the device's memory as at the start."""
        self.s = dataclasses.replace(self.s, prompt_len=_bucket(longest_prompt))
        check_cache_fits(self.cfg, rows=self.s.slots, time=self.s.cache_len, mesh=self.mesh,
                         limit_bytes=self.max_cache_bytes, shared_rows=self.s.prompt_entries,
                         shared_time=self.s.prompt_len)

    def _fill(self, state, prompts, keys_Px2, queue, pools, owner, n):
        """Free slots take waiting samples, prefilling the next group of prompts when the pools run dry. With prefix
        sharing a sample also needs its prompt's entry, on the device of a free slot: a sample whose prompt's device
        is full, or a new prompt that finds no device with a free entry and a free slot, waits (`entry_waits`)."""
        free = [i for i, o in enumerate(owner) if o is None]
        while free and (queue or any(p.waiting for p in pools)):
            placed = False
            for pool in [p for p in pools if p.waiting]:
                take, slots, new_entries = self._admit(pool, free, n)
                if not take:
                    continue
                placed = True
                for slot, (i, j) in zip(slots, take):
                    owner[slot] = (pool.prompt_ids[i], j)
                    if self.entries is not None:
                        self.entries.join(slot, self.entries.of_prompt[pool.prompt_ids[i]])
                state = self._insert(state, pool, take, slots, keys_Px2, new_entries)
                taken = set(slots)
                free = [f for f in free if f not in taken]
            if placed:
                continue
            if not queue or sum(bool(p.waiting) for p in pools) >= _MAX_WAITING_POOLS:
                break
            if self.entries is not None and not self.entries.can_admit_new(self._free_by_shard(free)):
                break
            pools.append(self._prefill(prompts, queue, n))
        if free and (queue or any(p.waiting for p in pools)):
            self.stats.entry_waits += 1
        pools[:] = [p for p in pools if p.waiting]
        return state

    def _free_by_shard(self, free: list[int]) -> list[list[int]]:
        per = self.s.slots // self.s.shards
        by_shard: list[list[int]] = [[] for _ in range(self.s.shards)]
        for slot in free:
            by_shard[slot // per].append(slot)
        return by_shard

    def _admit(self, pool: _Pool, free: list[int], n: int) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """Waiting samples of the pool, in order, the free slots they take, and for each the entry its prompt must
        be copied into (-1: none; the prompt is in its entry already, or prefix sharing is off). With prefix
        sharing a sample that cannot start now (`_Entries.admit`) stays waiting and later ones are tried."""
        if self.entries is None:
            take = [pool.waiting.popleft() for _ in range(min(len(free), len(pool.waiting)))]
            return take, free[:len(take)], [-1] * len(take)
        free_by_shard = self._free_by_shard(free)
        take, slots, new_entries, kept = [], [], [], collections.deque()
        while pool.waiting:
            i, j = pool.waiting.popleft()
            admitted = self.entries.admit(pool.prompt_ids[i], n, free_by_shard)
            if admitted is None:
                kept.append((i, j))
                continue
            shard, entry, new = admitted
            take.append((i, j))
            slots.append(free_by_shard[shard].pop(0))
            new_entries.append(entry if new else -1)
        pool.waiting = kept
        return take, slots, new_entries

    def _prefill(self, prompts, queue, n) -> _Pool:
        s = self.s
        ids = [queue.popleft() for _ in range(min(s.prefill_group, len(queue)))]
        prompt_np, pad_np = _left_pad([prompts[i] for i in ids], s.prefill_group, s.prompt_len)
        ctx = jax.set_mesh(self.mesh) if self.mesh is not None else _null()
        with ctx:
            logits, k, v, seg = prefill_group(self.graphdef, self.params, _place(prompt_np, self.mesh),
                                              _place(pad_np, self.mesh))
        first_pos = jnp.asarray(s.prompt_len - pad_np, jnp.int32)
        self.stats.prefills += 1
        return _Pool((logits, k, v, seg, first_pos), ids, collections.deque((i, j) for i in range(len(ids))
                                                                             for j in range(n)))

    def _insert(self, state, pool: _Pool, take, slots, keys_Px2, new_entries):
        """One insert call for up to `slots` samples of one pool; the arrays are padded to the slot count."""
        a = self.s.slots
        slot_a = np.full((a,), a, np.int32)  # `a` = out of range: dropped
        src_a, sample_a = np.zeros((a,), np.int32), np.zeros((a,), np.int32)
        key_a = np.zeros((a, 2), np.uint32)
        entry_a = np.full((a,), self.s.prompt_entries, np.int32)  # out of range: no prompt to copy
        for r, (slot, (i, j), entry) in enumerate(zip(slots, take, new_entries)):
            slot_a[r], src_a[r], sample_a[r] = slot, i, j
            key_a[r] = keys_Px2[pool.prompt_ids[i]]
            if entry >= 0:
                entry_a[r] = entry
        self.stats.inserts += len(take)
        sharing = None
        if self.entries is not None:
            sharing = tuple(jnp.asarray(x) for x in (entry_a, self.entries.members_ExM, self.entries.entry_S,
                                                     self.entries.member_S))
        ctx = jax.set_mesh(self.mesh) if self.mesh is not None else _null()
        with ctx:
            return self.programs.insert(self.params, state, pool.arrays, jnp.asarray(slot_a), jnp.asarray(src_a),
                                        jnp.asarray(key_a), jnp.asarray(sample_a), sharing)

    def _collect(self, state, owner, results, stop_check):
        """Finished slots hand their request's tokens to `results` and become free; stop strings end requests."""
        live = _to_host(state.live_S)
        busy = [i for i, o in enumerate(owner) if o is not None]
        if not busy or (stop_check is None and all(live[i] for i in busy)):
            return state  # nothing to hand back: the [slots, max_new_tokens] buffers stay on the device
        t = _to_host(state.t_S)
        tokens, logq = _to_host(state.out_tokens_SxN), _to_host(state.out_logq_SxN)
        stop_set = set(self.s.stop_ids)
        evicted = []
        for slot in busy:
            seq = tokens[slot, :t[slot]].tolist()
            if live[slot] and not (stop_check is not None and stop_check(seq)):
                continue
            if live[slot]:
                evicted.append(slot)
            done = bool(seq) and seq[-1] in stop_set
            results[owner[slot]] = (seq, logq[slot, :t[slot]].copy(), done)
            if self.entries is not None:
                self.entries.leave(slot, owner[slot][0])
            owner[slot] = None
        if evicted:
            padded = evicted + [self.s.slots] * (self.s.slots - len(evicted))  # out of range: dropped
            state = self.programs.evict(state, jnp.asarray(padded, jnp.int32))
        return state


def round_to_batch(rows: int, mesh) -> int:
    """`rows` rounded up to a multiple of the devices the mesh splits the batch over."""
    divisor = parallel.batch_divisor(mesh) if mesh is not None else 1
    return -(-rows // divisor) * divisor


def default_slots(num_requests: int, mesh) -> int:
    """Decode slots when none are given: every request at once up to 256, a multiple of the mesh's batch axes."""
    return round_to_batch(min(max(num_requests, 1), 256), mesh)


def default_prompt_entries(slots: int, n: int, mesh) -> int:
    """Prompt entries when prefix sharing is on and none are given: two prompts' worth of slots per n slots (a
    prompt's samples finish at different times, so fewer than n of them are live on average), at most one per slot."""
    return min(round_to_batch(-(-2 * slots // n), mesh), round_to_batch(slots, mesh))


def make_settings(*, n: int, slots: int, num_prompts: int, prompt_len: int, max_new_tokens: int, temperature: float,
                  top_k: int, top_p: float, greedy: bool, stop_token_ids: Sequence[int],
                  banned_token_ids: Sequence[int], steps_per_sync: int, mesh, prefix_sharing: bool = False,
                  prompt_entries: int | None = None) -> Settings:
    """The engine's settings for one call (the one place they are derived: `generate_continuous` and the
    ahead-of-time compile of the E-step's sampler, bolt_jax.aot): the prompt bucket for the longest prompt, prefill
    groups of slots / n prompts and, with prefix sharing, the prompt entries, each a multiple of the mesh's batch."""
    divisor = parallel.batch_divisor(mesh) if mesh is not None else 1
    if slots < 1 or slots % divisor:
        raise ValueError(f"decode_slots={slots} must be a positive multiple of the mesh's batch devices ({divisor})")
    entries = 0
    if prefix_sharing:
        entries = prompt_entries or default_prompt_entries(slots, n, mesh)
        if entries % divisor:
            raise ValueError(f"prompt_entries={entries} must be a multiple of the mesh's batch devices ({divisor})")
    return Settings(slots=slots, prompt_len=_bucket(prompt_len), max_new_tokens=max_new_tokens,
                    temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), greedy=bool(greedy),
                    stop_ids=tuple(int(i) for i in stop_token_ids),
                    banned_ids=tuple(sorted(int(i) for i in banned_token_ids)),
                    prefill_group=round_to_batch(max(1, min(num_prompts, slots // n)), mesh),
                    steps_per_sync=steps_per_sync, prompt_entries=entries, samples_per_prompt=n if entries else 1,
                    shards=divisor if entries else 1)


def generate_continuous(model: Llama, prompts: Sequence[Sequence[int]], *, prompt_seeds: Sequence[int] | None,
                        **kwargs):
    """`sampler.generate(..., scheduler="continuous")`: same arguments and result as the static path; `on_done` is
    called as requests finish (`ContinuousEngine.run`); `prefix_sharing` with `prompt_entries` (None: automatic)
    shares each prompt's KV among its samples (module docstring). A stream of one batch (`generate_stream`)."""
    for _, result in generate_stream(model, [(None, prompts, prompt_seeds)], **kwargs):
        return result
    raise AssertionError("a stream of one batch yields one result")


def generate_stream(model: Llama, batches: Iterable[tuple[Any, Sequence[Sequence[int]], Sequence[int] | None]], *,
                    n: int, max_new_tokens: int, temperature: float, top_k: int, top_p: float, greedy: bool,
                    stop_token_ids: Sequence[int], stop_strings: Sequence[str], banned_token_ids: Sequence[int],
                    max_prompt_len: int | None, seed: int, mesh, tokenizer, decode_slots: int | None,
                    steps_per_sync: int, max_cache_bytes: int | None, on_done: DoneCallback | None = None,
                    prefix_sharing: bool = False,
                    prompt_entries: int | None = None) -> Iterator[tuple[Any, Any]]:
    """(key, GenerationResult) per (key, prompts, prompt_seeds) batch, in order, each equal to what `generate` gives
    that batch alone (a request's samples depend on its seed only), from one engine whose slots move on to the next
    batch while a batch's last samples finish (`ContinuousEngine.stream`). The first batch sets the prompt bucket,
    the prefill group and, unless `decode_slots` is given, the slots (for its prompts x n requests)."""
    from bolt_jax.sampling.sampler import GenerationResult
    cfg = model.config
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        return

    truncated: dict = {}

    def prepared(batch):
        key, batch_prompts, seeds = batch
        if key in truncated:
            raise ValueError(f"batch key {key!r} given twice: each batch of a stream needs its own key")
        cut, truncated[key] = _truncate_prompts(cfg, batch_prompts, max_new_tokens, max_prompt_len)
        return key, cut, _prompt_keys(len(cut), len(cut), seed, seeds)

    key0, prompts0, keys0 = prepared(first)
    slots = decode_slots or default_slots(len(prompts0) * n, mesh)
    settings = make_settings(n=n, slots=slots, num_prompts=len(prompts0), prompt_len=max(len(p) for p in prompts0),
                             max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             greedy=greedy, stop_token_ids=stop_token_ids, banned_token_ids=banned_token_ids,
                             steps_per_sync=steps_per_sync, mesh=mesh, prefix_sharing=prefix_sharing,
                             prompt_entries=prompt_entries)
    check_cache_fits(cfg, rows=slots, time=settings.cache_len, mesh=mesh, limit_bytes=max_cache_bytes,
                     shared_rows=settings.prompt_entries, shared_time=settings.prompt_len)
    stop_check = None
    if stop_strings and tokenizer is not None:
        def stop_check(seq: list[int]) -> bool:
            text = tokenizer.decode(seq)
            return any(x and x in text for x in stop_strings)
    engine = ContinuousEngine(model, settings, mesh, max_cache_bytes=max_cache_bytes)
    sizes: dict = {}

    def feed():
        for batch in itertools.chain([(key0, prompts0, keys0)], map(prepared, batches)):
            sizes[batch[0]] = [len(p) for p in batch[1]]
            yield batch

    stop_set = set(settings.stop_ids)
    for key, results in _under_mesh(engine.stream(feed(), n=n, stop_check=stop_check, on_done=on_done), mesh):
        out = collections.defaultdict(list)
        for i in range(len(sizes[key])):
            for j in range(n):
                seq, lq, done = results[(i, j)]
                seq, lq, finished, text = _finish_row(seq, lq, done, stop_set, tokenizer, stop_strings)
                for name, value in (("tokens", seq), ("token_logq", np.asarray(lq, np.float64)),
                                    ("done", finished), ("lengths", len(seq)), ("texts", text)):
                    out[name].append(value)
        yield key, GenerationResult(
            tokens=out["tokens"], token_logq=out["token_logq"], logq=np.array([x.sum() for x in out["token_logq"]]),
            done=np.array(out["done"]), lengths=np.array(out["lengths"]),
            texts=out["texts"] if tokenizer is not None else None,
            num_truncated_prompts=truncated.pop(key), prompt_lengths=sizes.pop(key),
            stats={"scheduler": "continuous", "slots": engine.s.slots, "decode_steps": engine.stats.decode_steps,
                   "slot_occupancy": engine.stats.occupancy, "prefills": engine.stats.prefills,
                   "prompt_entries": engine.s.prompt_entries, "entry_waits": engine.stats.entry_waits,
                   "prompt_bucket": engine.s.prompt_len})


def _under_mesh(items: Iterator, mesh) -> Iterator:
    """`items`, each one computed with `mesh` set (`jax.set_mesh`) and handed on with it unset: a generator that
    yielded inside `with jax.set_mesh(...)` would leave the mesh set in its consumer's thread while suspended (and
    for good if abandoned), changing how everything the consumer compiles meanwhile is sharded."""
    while True:
        with jax.set_mesh(mesh) if mesh is not None else _null():
            item = next(items, None)
        if item is None:
            return
        yield item
