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
The prompts' KV then lives in `prompt_entries` shared *entries* [E, P, K, D] and each slot's own cache holds only its
generated tokens; a step attends each entry's prompt with the queries of all its member slots in one block
(`kernels.decode_attention` with Q = n queries per entry), attends each slot's own tokens separately, and merges the
two by their log-sum-exps (`decode.merge_attention`). A prompt holds its entry until its last sample finishes; a
free slot whose next sample's prompt has no entry waits for one (fewer entries: fewer bytes per step, more waiting).

Every device function has fixed shapes (slots, prompt bucket, cache length, prefill group), so requests come and go
without recompiling. Determinism: sample j of prompt i draws token t from fold_in(fold_in(key_i, j), t), as the static
path does (`sampler._row_keys`), and the prompt sits at the same cache positions (left-padded to the same bucket),
so a request's tokens and log q depend on its seed alone, never on its slot, its neighbours or the schedule.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bolt_jax import kernels, parallel
from bolt_jax.kernels import decode as decode_kernels
from bolt_jax.model.llama import (
    Llama,
    attention_inputs,
    attention_output_and_mlp,
    fuse_projections,
    pure_dict,
    rms_norm,
    rope_cos_sin,
    unstack_layers,
)
from bolt_jax.parallel import constrain
from bolt_jax.sampling.sampler import (
    DoneCallback,
    _bucket,
    _finish_row,
    _left_pad,
    _null,
    _place,
    _prefill,
    _prompt_keys,
    _to_host,
    _truncate_prompts,
    cache_time,
    check_cache_fits,
    decode_impl_of,
)
from bolt_jax.sampling.transforms import sample_tokens, transform_logits

CACHE_AXES = ("batch", "cache_time", "act_kv_heads", "act_head_dim")


class SlotState(NamedTuple):
    """Everything the decode slots hold on the device; row s is slot s."""
    k_cache: tuple[jax.Array, ...]  # one [S, T, K, D] buffer per layer
    v_cache: tuple[jax.Array, ...]
    kv_seg_SxT: jax.Array  # 1 where the cache holds the slot's prompt or generated tokens, 0 elsewhere
    row_key_Sx2: jax.Array  # raw key data of fold_in(prompt key, sample index)
    first_pos_S: jax.Array  # the prompt's length: the position of generated token 0
    t_S: jax.Array  # tokens generated so far
    last_tok_S: jax.Array
    out_tokens_SxN: jax.Array
    out_logq_SxN: jax.Array
    live_S: jax.Array  # holds a request that is still decoding
    useful_steps: jax.Array  # slot-steps that decoded a live request (for the occupancy statistic)
    # prefix sharing only (None otherwise): the shared prompt entries and who reads them
    prompt_k: tuple[jax.Array, ...] | None = None  # one [E, P, K, D] buffer per layer
    prompt_v: tuple[jax.Array, ...] | None = None
    prompt_seg_ExP: jax.Array | None = None
    members_ExM: jax.Array | None = None  # the slots reading entry e (slots = nobody), M = samples per prompt
    entry_S: jax.Array | None = None  # the entry slot s reads, and its place among that entry's members
    member_S: jax.Array | None = None


@dataclass(frozen=True)
class Settings:
    """The static settings of one engine: every compiled function is keyed by them."""
    slots: int
    prompt_len: int  # the prompt bucket P (every prompt left-padded to it)
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    greedy: bool
    stop_ids: tuple[int, ...]
    banned_ids: tuple[int, ...]
    prefill_group: int
    steps_per_sync: int
    prompt_entries: int = 0  # > 0: prefix sharing with this many shared prompt entries (module docstring)
    samples_per_prompt: int = 1  # n: the members of an entry
    shards: int = 1  # prefix sharing: the batch devices slots and entries are split over (an entry serves its own's)

    @property
    def sharing(self) -> bool:
        return self.prompt_entries > 0

    @property
    def cache_len(self) -> int:
        """Positions of a slot's own cache: prompt and new tokens, or only the new ones when prompts are shared."""
        return cache_time(0 if self.sharing else self.prompt_len, self.max_new_tokens)

    def write_index(self, t_S):
        """The cache position of a slot's last token (generated token t - 1)."""
        return t_S - 1 + (0 if self.sharing else self.prompt_len)


def _pick(cfg, s: Settings, row_keys_Sx2, t_S, logits_SxV):
    """Each row's token t and its log q, drawn with fold_in(row key, t): the static path's keys exactly."""
    banned = jnp.zeros((cfg.vocab_size,), bool).at[jnp.asarray(s.banned_ids, jnp.int32)].set(True) \
        if s.banned_ids else None
    keys = jax.vmap(lambda k, t: jax.random.fold_in(jax.random.wrap_key_data(k), t))(row_keys_Sx2, t_S)
    x = transform_logits(logits_SxV, temperature=1.0 if s.greedy else s.temperature, top_k=0 if s.greedy else s.top_k,
                         top_p=1.0 if s.greedy else s.top_p, banned_mask_V=banned)
    return sample_tokens(keys, x, s.greedy)


def _stop_array(s: Settings) -> jax.Array:
    return jnp.asarray(s.stop_ids if s.stop_ids else (-1,), jnp.int32)


# ---------------------------------------------------------------------------------------------- on the device
@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def init_slots(graphdef, params, *, settings: Settings) -> SlotState:
    """Empty slots: zero caches, nothing live."""
    cfg = nnx.merge(graphdef, params).config
    sl, t, n = settings.slots, settings.cache_len, settings.max_new_tokens
    shape = (sl, t, cfg.num_key_value_heads, cfg.head_size)
    cache = tuple(constrain(jnp.zeros(shape, cfg.jnp_compute_dtype), CACHE_AXES) for _ in range(cfg.num_hidden_layers))
    zeros = functools.partial(jnp.zeros, (sl,), jnp.int32)
    shared = {}
    if settings.sharing:
        e, p = settings.prompt_entries, settings.prompt_len
        prompt = tuple(constrain(jnp.zeros((e, p, cfg.num_key_value_heads, cfg.head_size), cfg.jnp_compute_dtype),
                                 CACHE_AXES) for _ in range(cfg.num_hidden_layers))
        shared = dict(prompt_k=prompt, prompt_v=prompt, prompt_seg_ExP=jnp.zeros((e, p), jnp.int32),
                      members_ExM=jnp.full((e, settings.samples_per_prompt), sl // settings.shards, jnp.int32),
                      entry_S=zeros(), member_S=zeros())
    rows = functools.partial(constrain, logical_axes=("batch", None))  # a slot's outputs on its own device
    return SlotState(k_cache=cache, v_cache=cache, kv_seg_SxT=rows(jnp.zeros((sl, t), jnp.int32)),
                     row_key_Sx2=jnp.zeros((sl, 2), jnp.uint32), first_pos_S=zeros(), t_S=zeros(),
                     last_tok_S=zeros(), out_tokens_SxN=rows(jnp.zeros((sl, n), jnp.int32)),
                     out_logq_SxN=rows(jnp.zeros((sl, n), jnp.float32)), live_S=jnp.zeros((sl,), bool),
                     useful_steps=jnp.zeros((), jnp.int32), **shared)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def prefill_group(graphdef, params, prompt_GxP, pad_G):
    """A group of left-padded prompts through the model: (last logits [G, V], k and v [L, G, P, K, D], seg [G, P])."""
    model: Llama = nnx.merge(graphdef, params)
    return _prefill(model, model.layers.stacked_params(), prompt_GxP, pad_G)


def _share_prompts(state: SlotState, sharing, k_LxGxPxKxD, v_LxGxPxKxD, seg_GxP, src_A) -> SlotState:
    """Prefix sharing: copies newly admitted prompts into their entries and takes the host's membership tables."""
    new_entry_A, members_ExM, entry_S, member_S = sharing

    def put(buffer, rows):
        return constrain(buffer.at[new_entry_A].set(rows.astype(buffer.dtype), mode="drop"), CACHE_AXES)

    return state._replace(
        prompt_k=tuple(put(b, k_LxGxPxKxD[i][src_A]) for i, b in enumerate(state.prompt_k)),
        prompt_v=tuple(put(b, v_LxGxPxKxD[i][src_A]) for i, b in enumerate(state.prompt_v)),
        prompt_seg_ExP=state.prompt_seg_ExP.at[new_entry_A].set(seg_GxP[src_A], mode="drop"),
        members_ExM=members_ExM, entry_S=entry_S, member_S=member_S)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"), donate_argnames=("state",))
def insert(graphdef, params, state: SlotState, pool, slot_A, src_A, prompt_key_Ax2, sample_A, sharing=None, *,
           settings: Settings) -> SlotState:
    """Sample `sample_A[a]` of pooled prompt `src_A[a]` into slot `slot_A[a]` (slot == slots: no-op padding entry).

    The slot's whole cache row is rewritten (the prompt's KV, zeros after it; with prefix sharing only zeros) and its
    segment ids reset, so a slot that held a long request gives a short one exactly what a fresh slot would.
    `sharing` (prefix sharing only): (new_entry_A: the entry to copy prompt `src_A[a]` into, entries = none; the
    host's members_ExM, entry_S, member_S after this insert)."""
    cfg = nnx.merge(graphdef, params).config
    logits_GxV, k_LxGxPxKxD, v_LxGxPxKxD, seg_GxP, first_pos_G = pool
    own = ((0, 0), (0, settings.cache_len - settings.prompt_len), (0, 0), (0, 0))

    def put(buffer, rows):
        return constrain(buffer.at[slot_A].set(rows.astype(buffer.dtype), mode="drop"), CACHE_AXES)

    def own_rows(x_GxPxKxD):
        """A slot's new cache row: its prompt's KV then zeros, or only zeros when the prompt lives in an entry."""
        if settings.sharing:
            return jnp.zeros((len(slot_A), settings.cache_len) + x_GxPxKxD.shape[2:], x_GxPxKxD.dtype)
        return jnp.pad(x_GxPxKxD[src_A], own)

    k_cache = tuple(put(kc, own_rows(k_LxGxPxKxD[i])) for i, kc in enumerate(state.k_cache))
    v_cache = tuple(put(vc, own_rows(v_LxGxPxKxD[i])) for i, vc in enumerate(state.v_cache))
    if settings.sharing:
        kv_seg = jnp.zeros((len(slot_A), settings.cache_len), jnp.int32)
        state = _share_prompts(state, sharing, k_LxGxPxKxD, v_LxGxPxKxD, seg_GxP, src_A)
    else:
        kv_seg = jnp.pad(seg_GxP[src_A], ((0, 0), (0, settings.cache_len - settings.prompt_len)))
    row_keys = jax.vmap(lambda k, j: jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(k), j)))(
        prompt_key_Ax2, sample_A.astype(jnp.uint32))
    tok0, lq0 = _pick(cfg, settings, row_keys, jnp.zeros_like(sample_A), logits_GxV[src_A])
    n = settings.max_new_tokens
    set_rows = lambda x, rows: x.at[slot_A].set(rows, mode="drop")  # noqa: E731
    return state._replace(
        k_cache=k_cache, v_cache=v_cache, kv_seg_SxT=set_rows(state.kv_seg_SxT, kv_seg),
        row_key_Sx2=set_rows(state.row_key_Sx2, row_keys), first_pos_S=set_rows(state.first_pos_S, first_pos_G[src_A]),
        t_S=set_rows(state.t_S, jnp.ones_like(sample_A)), last_tok_S=set_rows(state.last_tok_S, tok0),
        out_tokens_SxN=set_rows(state.out_tokens_SxN, jnp.zeros((len(sample_A), n), jnp.int32).at[:, 0].set(tok0)),
        out_logq_SxN=set_rows(state.out_logq_SxN, jnp.zeros((len(sample_A), n), jnp.float32).at[:, 0].set(lq0)),
        live_S=set_rows(state.live_S, ~jnp.isin(tok0, _stop_array(settings)) & (n > 1)))


def _slot_layer(cfg, h_Sx1xD, p, cos, sin, k_cache, v_cache, kv_seg_SxT, write_S, decode_impl: str, shared=None):
    """One layer for one new token per slot, each slot writing its own cache position `write_S`. With prefix sharing
    (`shared` = (this layer's prompt k, prompt v, the slot state, shards)) the slot's own cache holds only its generated
    tokens and `_own_and_shared_attention` adds its prompt from the shared entry."""
    q, k, v = attention_inputs(cfg, h_Sx1xD, p, cos, sin)
    rows = jnp.arange(h_Sx1xD.shape[0])
    k_cache = k_cache.at[rows, write_S].set(k[:, 0].astype(k_cache.dtype))
    v_cache = v_cache.at[rows, write_S].set(v[:, 0].astype(v_cache.dtype))
    kw = dict(kv_segment_ids_BxT=kv_seg_SxT, lengths_B=write_S + 1, sm_scale=cfg.head_size ** -0.5, impl=decode_impl)
    if shared is None:
        attn = kernels.decode_attention(q, k_cache, v_cache, **kw)
    else:
        prompt_k, prompt_v, state, shards = shared
        attn = _own_and_shared_attention(q, k_cache, v_cache, prompt_k, prompt_v, state, shards=shards, **kw)
    return attention_output_and_mlp(cfg, h_Sx1xD, attn, p), k_cache, v_cache


def _own_and_shared_attention(q_Sx1xHxD, k_cache, v_cache, prompt_k, prompt_v, s: SlotState, *, sm_scale: float,
                              impl: str, shards: int, **own):
    """Each entry's prompt KV read once for all its member slots' queries, each slot's own tokens from its own cache,
    the two attentions merged by their log-sum-exps. Members and entries are indexed within their batch shard (the
    host keeps an entry and its slots on one device), so the gathers below never cross devices."""
    own_out, own_lse = kernels.decode_attention(q_Sx1xHxD, k_cache, v_cache, sm_scale=sm_scale, impl=impl,
                                                return_lse=True, **own)
    q_ExMxHxD = _gather_members(q_Sx1xHxD[:, 0], s.members_ExM, shards)
    p_len = s.prompt_seg_ExP.shape[1]
    held_E = jnp.any(s.members_ExM < s.live_S.shape[0] // shards, axis=1)  # a free entry: length 0, the kernel skips it
    shared, shared_lse = kernels.decode_attention(q_ExMxHxD, prompt_k, prompt_v, kv_segment_ids_BxT=s.prompt_seg_ExP,
                                                  lengths_B=jnp.where(held_E, p_len, 0).astype(jnp.int32),
                                                  sm_scale=sm_scale, impl=impl, return_lse=True)
    mine = functools.partial(_gather_slots, entry_S=s.entry_S, member_S=s.member_S, shards=shards)
    return decode_kernels.merge_attention(mine(shared)[:, None], mine(shared_lse)[:, None], own_out, own_lse,
                                          dtype=q_Sx1xHxD.dtype)


def _by_shard(x, shards: int):
    """[N, ...] -> [shards, N / shards, ...], the leading axis over the batch devices (the layout of x's rows)."""
    return constrain(x.reshape(shards, x.shape[0] // shards, *x.shape[1:]), ("batch",) + (None,) * x.ndim)


def _gather_members(q_SxHxD, members_ExM, shards: int):
    """[E, M, H, D]: the queries of each entry's member slots (slot indices within the entry's shard; S / shards =
    nobody, zeros)."""
    take = jax.vmap(lambda q, idx: jnp.take(q, idx, axis=0, mode="fill", fill_value=0))
    out = take(_by_shard(q_SxHxD, shards), _by_shard(members_ExM, shards))
    return out.reshape(members_ExM.shape + q_SxHxD.shape[1:])


def _gather_slots(x_ExMx, *, entry_S, member_S, shards: int):
    """[S, ...]: each slot's row of an entry-major result (entry indices within the slot's shard)."""
    take = jax.vmap(lambda x, entry, member: x[entry, member])
    out = take(_by_shard(x_ExMx, shards), _by_shard(entry_S, shards), _by_shard(member_S, shards))
    return out.reshape(entry_S.shape + x_ExMx.shape[2:])


def _decode_one(model: Llama, layers, settings: Settings, s: SlotState) -> SlotState:
    """Every live slot's next token: embed, the layers against the slot's cache, logits, sample, bookkeeping."""
    cfg = model.config
    rows = jnp.arange(s.live_S.shape[0])
    write = settings.write_index(s.t_S)
    kv_seg = s.kv_seg_SxT.at[rows, write].set(jnp.where(s.live_S, 1, s.kv_seg_SxT[rows, write]))
    cos, sin = rope_cos_sin((s.first_pos_S + s.t_S - 1)[:, None], cfg.head_size, cfg.rope_theta)
    h = model.embed(s.last_tok_S[:, None])
    new_k, new_v = [], []
    for i, (p, kc, vc) in enumerate(zip(layers, s.k_cache, s.v_cache, strict=True)):
        shared = (s.prompt_k[i], s.prompt_v[i], s, settings.shards) if settings.sharing else None
        h, kc, vc = _slot_layer(cfg, h, p, cos, sin, kc, vc, kv_seg, write, decode_impl_of(cfg), shared)
        new_k.append(constrain(kc, CACHE_AXES))
        new_v.append(constrain(vc, CACHE_AXES))
    h = rms_norm(h, model.norm.weight[...], cfg.rms_norm_eps)
    t_safe = jnp.minimum(s.t_S, settings.max_new_tokens - 1)
    tok, lq = _pick(cfg, settings, s.row_key_Sx2, t_safe, model.logits_from_hidden(h)[:, 0])
    live = s.live_S
    out_tokens = s.out_tokens_SxN.at[rows, t_safe].set(jnp.where(live, tok, s.out_tokens_SxN[rows, t_safe]))
    out_logq = s.out_logq_SxN.at[rows, t_safe].set(jnp.where(live, lq, s.out_logq_SxN[rows, t_safe]))
    t_next = s.t_S + live.astype(jnp.int32)
    still = live & ~jnp.isin(tok, _stop_array(settings)) & (t_next < settings.max_new_tokens)
    return s._replace(k_cache=tuple(new_k), v_cache=tuple(new_v), kv_seg_SxT=kv_seg, t_S=t_next,
                      last_tok_S=jnp.where(live, tok, s.last_tok_S), out_tokens_SxN=out_tokens,
                      out_logq_SxN=out_logq, live_S=still, useful_steps=s.useful_steps + jnp.sum(live))


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"), donate_argnames=("state",))
def decode_chunk(graphdef, params, state: SlotState, *, settings: Settings) -> tuple[SlotState, jax.Array]:
    """Up to `steps_per_sync` decode steps (fewer when no slot is live). Returns the state and the steps run."""
    model: Llama = nnx.merge(graphdef, params)
    layers = [fuse_projections(p) for p in unstack_layers(model.layers.stacked_params(),
                                                            model.config.num_hidden_layers)]

    def cond(carry):
        i, s = carry
        return (i < settings.steps_per_sync) & jnp.any(s.live_S)

    def body(carry):
        i, s = carry
        return i + 1, _decode_one(model, layers, settings, s)

    steps, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    return state, steps


@functools.partial(jax.jit, donate_argnames=("state",))
def evict(state: SlotState, slot_E) -> SlotState:
    """Marks slots finished (a stop string the host found in their text)."""
    return state._replace(live_S=state.live_S.at[slot_E].set(False, mode="drop"))


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
            state, steps = decode_chunk(self.graphdef, self.params, state, settings=self.s)
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
        return init_slots(self.graphdef, self.params, settings=s)

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
            return insert(self.graphdef, self.params, state, pool.arrays, jnp.asarray(slot_a), jnp.asarray(src_a),
                          jnp.asarray(key_a), jnp.asarray(sample_a), sharing, settings=self.s)

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
            state = evict(state, jnp.asarray(evicted + [self.s.slots] * (self.s.slots - len(evicted)), jnp.int32))
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
