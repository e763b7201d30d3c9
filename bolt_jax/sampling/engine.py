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

Every device function has fixed shapes (slots, prompt bucket, cache length, prefill group), so requests come and go
without recompiling. Determinism: sample j of prompt i draws token t from fold_in(fold_in(key_i, j), t), as the static
path does (`sampler._row_keys`), and the prompt sits at the same cache positions (left-padded to the same bucket),
so a request's tokens and log q depend on its seed alone, never on its slot, its neighbours or the schedule.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bolt_jax import kernels, parallel
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

    @property
    def cache_len(self) -> int:
        return cache_time(self.prompt_len, self.max_new_tokens)


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
    return SlotState(k_cache=cache, v_cache=cache, kv_seg_SxT=jnp.zeros((sl, t), jnp.int32),
                     row_key_Sx2=jnp.zeros((sl, 2), jnp.uint32), first_pos_S=zeros(), t_S=zeros(),
                     last_tok_S=zeros(), out_tokens_SxN=jnp.zeros((sl, n), jnp.int32),
                     out_logq_SxN=jnp.zeros((sl, n), jnp.float32), live_S=jnp.zeros((sl,), bool),
                     useful_steps=jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def prefill_group(graphdef, params, prompt_GxP, pad_G):
    """A group of left-padded prompts through the model: (last logits [G, V], k and v [L, G, P, K, D], seg [G, P])."""
    model: Llama = nnx.merge(graphdef, params)
    return _prefill(model, model.layers.stacked_params(), prompt_GxP, pad_G)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"), donate_argnames=("state",))
def insert(graphdef, params, state: SlotState, pool, slot_A, src_A, prompt_key_Ax2, sample_A, *,
           settings: Settings) -> SlotState:
    """Sample `sample_A[a]` of pooled prompt `src_A[a]` into slot `slot_A[a]` (slot == slots: no-op padding entry).

    The slot's whole cache row is rewritten (the prompt's KV, zeros after it) and its segment ids reset, so a slot
    that held a long request gives a short one exactly what a fresh slot would."""
    cfg = nnx.merge(graphdef, params).config
    logits_GxV, k_LxGxPxKxD, v_LxGxPxKxD, seg_GxP, first_pos_G = pool
    pad_time = ((0, 0), (0, settings.cache_len - settings.prompt_len), (0, 0), (0, 0))

    def put(buffer, rows):
        return constrain(buffer.at[slot_A].set(rows.astype(buffer.dtype), mode="drop"), CACHE_AXES)

    k_cache = tuple(put(kc, jnp.pad(k_LxGxPxKxD[i][src_A], pad_time)) for i, kc in enumerate(state.k_cache))
    v_cache = tuple(put(vc, jnp.pad(v_LxGxPxKxD[i][src_A], pad_time)) for i, vc in enumerate(state.v_cache))
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


def _slot_layer(cfg, h_Sx1xD, p, cos, sin, k_cache, v_cache, kv_seg_SxT, write_S, decode_impl: str):
    """One layer for one new token per slot, each slot writing its own cache position `write_S`."""
    q, k, v = attention_inputs(cfg, h_Sx1xD, p, cos, sin)
    rows = jnp.arange(h_Sx1xD.shape[0])
    k_cache = k_cache.at[rows, write_S].set(k[:, 0].astype(k_cache.dtype))
    v_cache = v_cache.at[rows, write_S].set(v[:, 0].astype(v_cache.dtype))
    attn = kernels.decode_attention(q, k_cache, v_cache, kv_segment_ids_BxT=kv_seg_SxT, lengths_B=write_S + 1,
                                    sm_scale=cfg.head_size ** -0.5, impl=decode_impl)
    return attention_output_and_mlp(cfg, h_Sx1xD, attn, p), k_cache, v_cache


def _decode_one(model: Llama, layers, settings: Settings, s: SlotState) -> SlotState:
    """Every live slot's next token: embed, the layers against the slot's cache, logits, sample, bookkeeping."""
    cfg = model.config
    rows = jnp.arange(s.live_S.shape[0])
    write = settings.prompt_len + s.t_S - 1  # the cache position of the last token (generated token t - 1)
    kv_seg = s.kv_seg_SxT.at[rows, write].set(jnp.where(s.live_S, 1, s.kv_seg_SxT[rows, write]))
    cos, sin = rope_cos_sin((s.first_pos_S + s.t_S - 1)[:, None], cfg.head_size, cfg.rope_theta)
    h = model.embed(s.last_tok_S[:, None])
    new_k, new_v = [], []
    for p, kc, vc in zip(layers, s.k_cache, s.v_cache, strict=True):
        h, kc, vc = _slot_layer(cfg, h, p, cos, sin, kc, vc, kv_seg, write, decode_impl_of(cfg))
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
@dataclass
class _Pool:
    """A prefilled group on the device and the samples of its prompts not yet inserted: [(prompt, sample)]."""
    arrays: tuple
    prompt_ids: list[int]
    waiting: collections.deque = field(default_factory=collections.deque)


@dataclass
class EngineStats:
    decode_steps: int = 0
    slot_steps: int = 0  # decode_steps x slots
    useful_slot_steps: int = 0  # slot-steps that decoded a live request
    prefills: int = 0
    inserts: int = 0

    @property
    def occupancy(self) -> float:
        """The share of slot-steps that did useful work."""
        return self.useful_slot_steps / self.slot_steps if self.slot_steps else 0.0


class ContinuousEngine:
    """Runs a list of requests (prompt i, sample j) through the decode slots; see the module docstring."""

    def __init__(self, model: Llama, settings: Settings, mesh=None):
        self.graphdef, state = nnx.split(model)
        self.params = pure_dict(state)
        self.cfg, self.s, self.mesh = model.config, settings, mesh
        self.stats = EngineStats()

    def run(self, prompts: list[list[int]], keys_Px2: np.ndarray, *, n: int, stop_check=None,
            on_done: DoneCallback | None = None) -> dict:
        """{(prompt, sample): (tokens, log q, done by a stop token)} for every request. `stop_check(tokens)` (host)
        ends a request early, e.g. on a stop string; the static path would cut the same tokens afterwards.
        `on_done(k)` is told after each chunk that k more requests finished (never with 0): it runs after `_collect`
        has read the slots, so it costs no device sync of its own."""
        s = self.s
        queue = collections.deque(range(len(prompts)))
        pools: list[_Pool] = []
        owner: list[tuple[int, int] | None] = [None] * s.slots
        results: dict[tuple[int, int], tuple[list[int], np.ndarray, bool]] = {}
        state = init_slots(self.graphdef, self.params, settings=s)
        total = len(prompts) * n
        while len(results) < total:
            state = self._fill(state, prompts, keys_Px2, queue, pools, owner, n)
            state, steps = decode_chunk(self.graphdef, self.params, state, settings=s)
            self.stats.decode_steps += int(steps)
            self.stats.slot_steps += int(steps) * s.slots
            finished = len(results)
            state = self._collect(state, owner, results, stop_check)
            if on_done is not None and len(results) > finished:
                on_done(len(results) - finished)
        self.stats.useful_slot_steps = int(_to_host(state.useful_steps))
        return results

    def _fill(self, state, prompts, keys_Px2, queue, pools, owner, n):
        """Free slots take waiting samples, prefilling the next group of prompts when the pools run dry."""
        free = [i for i, o in enumerate(owner) if o is None]
        while free and (queue or any(p.waiting for p in pools)):
            pool = next((p for p in pools if p.waiting), None)
            if pool is None:
                pool = self._prefill(prompts, queue, n)
                pools.append(pool)
            take = [pool.waiting.popleft() for _ in range(min(len(free), len(pool.waiting)))]
            slots = free[:len(take)]
            free = free[len(take):]
            state = self._insert(state, pool, take, slots, keys_Px2)
            for slot, (i, j) in zip(slots, take):
                owner[slot] = (pool.prompt_ids[i], j)
        pools[:] = [p for p in pools if p.waiting]
        return state

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

    def _insert(self, state, pool: _Pool, take, slots, keys_Px2):
        """One insert call for up to `slots` samples of one pool; the arrays are padded to the slot count."""
        a = self.s.slots
        slot_a = np.full((a,), a, np.int32)  # `a` = out of range: dropped
        src_a, sample_a = np.zeros((a,), np.int32), np.zeros((a,), np.int32)
        key_a = np.zeros((a, 2), np.uint32)
        for r, (slot, (i, j)) in enumerate(zip(slots, take)):
            slot_a[r], src_a[r], sample_a[r] = slot, i, j
            key_a[r] = keys_Px2[pool.prompt_ids[i]]
        self.stats.inserts += len(take)
        ctx = jax.set_mesh(self.mesh) if self.mesh is not None else _null()
        with ctx:
            return insert(self.graphdef, self.params, state, pool.arrays, jnp.asarray(slot_a), jnp.asarray(src_a),
                          jnp.asarray(key_a), jnp.asarray(sample_a), settings=self.s)

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


def generate_continuous(model: Llama, prompts: Sequence[Sequence[int]], *, n: int, max_new_tokens: int,
                        temperature: float, top_k: int, top_p: float, greedy: bool, stop_token_ids: Sequence[int],
                        stop_strings: Sequence[str], banned_token_ids: Sequence[int], max_prompt_len: int | None,
                        seed: int, prompt_seeds: Sequence[int] | None, mesh, tokenizer, decode_slots: int | None,
                        steps_per_sync: int, max_cache_bytes: int | None, on_done: DoneCallback | None = None):
    """`sampler.generate(..., scheduler="continuous")`: same arguments and result as the static path; `on_done` is
    called as requests finish (`ContinuousEngine.run`)."""
    from bolt_jax.sampling.sampler import GenerationResult
    cfg = model.config
    prompts, truncated = _truncate_prompts(cfg, prompts, max_new_tokens, max_prompt_len)
    slots = decode_slots or default_slots(len(prompts) * n, mesh)
    divisor = parallel.batch_divisor(mesh) if mesh is not None else 1
    if slots < 1 or slots % divisor:
        raise ValueError(f"decode_slots={slots} must be a positive multiple of the mesh's batch devices ({divisor})")
    group = round_to_batch(max(1, min(len(prompts), slots // n)), mesh)
    settings = Settings(slots=slots, prompt_len=_bucket(max(len(p) for p in prompts)), max_new_tokens=max_new_tokens,
                        temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), greedy=bool(greedy),
                        stop_ids=tuple(int(i) for i in stop_token_ids),
                        banned_ids=tuple(sorted(int(i) for i in banned_token_ids)), prefill_group=group,
                        steps_per_sync=steps_per_sync)
    check_cache_fits(cfg, rows=slots, time=settings.cache_len, mesh=mesh, limit_bytes=max_cache_bytes)
    keys = _prompt_keys(len(prompts), len(prompts), seed, prompt_seeds)
    stop_check = None
    if stop_strings and tokenizer is not None:
        def stop_check(seq: list[int]) -> bool:
            text = tokenizer.decode(seq)
            return any(x and x in text for x in stop_strings)
    engine = ContinuousEngine(model, settings, mesh)
    ctx = jax.set_mesh(mesh) if mesh is not None else _null()
    with ctx:
        results = engine.run(prompts, keys, n=n, stop_check=stop_check, on_done=on_done)
    stop_set = set(settings.stop_ids)
    out = collections.defaultdict(list)
    for i in range(len(prompts)):
        for j in range(n):
            seq, lq, done = results[(i, j)]
            seq, lq, finished, text = _finish_row(seq, lq, done, stop_set, tokenizer, stop_strings)
            for key, value in (("tokens", seq), ("token_logq", np.asarray(lq, np.float64)), ("done", finished),
                               ("lengths", len(seq)), ("texts", text)):
                out[key].append(value)
    return GenerationResult(tokens=out["tokens"], token_logq=out["token_logq"],
                            logq=np.array([x.sum() for x in out["token_logq"]]), done=np.array(out["done"]),
                            lengths=np.array(out["lengths"]), texts=out["texts"] if tokenizer is not None else None,
                            num_truncated_prompts=truncated, prompt_lengths=[len(p) for p in prompts],
                            stats={"scheduler": "continuous", "slots": slots, "decode_steps": engine.stats.decode_steps,
                                   "slot_occupancy": engine.stats.occupancy, "prefills": engine.stats.prefills})
