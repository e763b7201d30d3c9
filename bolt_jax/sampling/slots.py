"""The continuous engine's device side: the slot state, and the programs that fill it (prefill, insert), advance it
(a decode chunk) and end rows (evict), each with fixed shapes keyed by `Settings`. The host side, which decides what
goes where, is `bolt_jax.sampling.engine`; its docstring describes the scheme.

The slot state stays on the device between programs in one layout and sharding, the decode chunk's (`programs`,
`compile_decode`): on a TPU a layout that pads the caches makes the compiler copy every cache buffer at each chunk's
start and end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental.layout import Format, Layout

from bolt_jax import kernels, parallel
from bolt_jax.aot import hlo
from bolt_jax.aot.compiler import DoesNotFit, does_not_fit
from bolt_jax.kernels import decode as decode_kernels
from bolt_jax.model.llama import (
    Llama,
    attention_inputs,
    attention_output_and_mlp,
    fuse_projections,
    rms_norm,
    rope_cos_sin,
    unstack_layers,
)
from bolt_jax.parallel import constrain
from bolt_jax.sampling.sampler import _prefill, cache_layout, cache_time, constrain_cache, decode_impl_of
from bolt_jax.sampling.transforms import sample_tokens, transform_logits


class SlotState(NamedTuple):
    """Everything the decode slots hold on the device; row s is slot s."""
    k_cache: tuple[jax.Array, ...]  # one [S, T, K * D] buffer per layer (`sampler.cache_layout`)
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
    prompt_k: tuple[jax.Array, ...] | None = None  # one [E, P, K * D] buffer per layer
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
def init_slots(graphdef, params, *, settings: Settings) -> SlotState:
    """Empty slots: zero caches, nothing live."""
    cfg = nnx.merge(graphdef, params).config
    sl, t, n = settings.slots, settings.cache_len, settings.max_new_tokens
    kvh, kd = cfg.num_key_value_heads, cfg.num_key_value_heads * cfg.head_size
    cache = tuple(constrain_cache(jnp.zeros((sl, t, kd), cfg.jnp_compute_dtype), kvh)
                  for _ in range(cfg.num_hidden_layers))
    zeros = functools.partial(jnp.zeros, (sl,), jnp.int32)
    shared = {}
    if settings.sharing:
        e, p = settings.prompt_entries, settings.prompt_len
        prompt = tuple(constrain_cache(jnp.zeros((e, p, kd), cfg.jnp_compute_dtype), kvh)
                       for _ in range(cfg.num_hidden_layers))
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
    """A group of left-padded prompts through the model: (last logits [G, V], k and v [L, G, P, K * D], seg [G, P])."""
    model: Llama = nnx.merge(graphdef, params)
    return _prefill(model, model.layers.stacked_params(), prompt_GxP, pad_G)


def _share_prompts(state: SlotState, sharing, k_LxGxPxKD, v_LxGxPxKD, seg_GxP, src_A, kv_heads: int) -> SlotState:
    """Prefix sharing: copies newly admitted prompts into their entries and takes the host's membership tables."""
    new_entry_A, members_ExM, entry_S, member_S = sharing

    def put(buffer, rows):
        return constrain_cache(buffer.at[new_entry_A].set(rows.astype(buffer.dtype), mode="drop"), kv_heads)

    return state._replace(
        prompt_k=tuple(put(b, k_LxGxPxKD[i][src_A]) for i, b in enumerate(state.prompt_k)),
        prompt_v=tuple(put(b, v_LxGxPxKD[i][src_A]) for i, b in enumerate(state.prompt_v)),
        prompt_seg_ExP=state.prompt_seg_ExP.at[new_entry_A].set(seg_GxP[src_A], mode="drop"),
        members_ExM=members_ExM, entry_S=entry_S, member_S=member_S)


def insert(graphdef, params, state: SlotState, pool, slot_A, src_A, prompt_key_Ax2, sample_A, sharing=None, *,
           settings: Settings) -> SlotState:
    """Sample `sample_A[a]` of pooled prompt `src_A[a]` into slot `slot_A[a]` (slot == slots: no-op padding entry).

    The slot's whole cache row is rewritten (the prompt's KV, zeros after it; with prefix sharing only zeros) and its
    segment ids reset, so a slot that held a long request gives a short one exactly what a fresh slot would.
    `sharing` (prefix sharing only): (new_entry_A: the entry to copy prompt `src_A[a]` into, entries = none; the
    host's members_ExM, entry_S, member_S after this insert)."""
    cfg = nnx.merge(graphdef, params).config
    logits_GxV, k_LxGxPxKD, v_LxGxPxKD, seg_GxP, first_pos_G = pool
    own = ((0, 0), (0, settings.cache_len - settings.prompt_len), (0, 0))
    kvh = cfg.num_key_value_heads

    def put(buffer, rows):
        return constrain_cache(buffer.at[slot_A].set(rows.astype(buffer.dtype), mode="drop"), kvh)

    def own_rows(x_GxPxKD):
        """A slot's new cache row: its prompt's KV then zeros, or only zeros when the prompt lives in an entry."""
        if settings.sharing:
            return jnp.zeros((len(slot_A), settings.cache_len) + x_GxPxKD.shape[2:], x_GxPxKD.dtype)
        return jnp.pad(x_GxPxKD[src_A], own)

    k_cache = tuple(put(kc, own_rows(k_LxGxPxKD[i])) for i, kc in enumerate(state.k_cache))
    v_cache = tuple(put(vc, own_rows(v_LxGxPxKD[i])) for i, vc in enumerate(state.v_cache))
    if settings.sharing:
        kv_seg = jnp.zeros((len(slot_A), settings.cache_len), jnp.int32)
        state = _share_prompts(state, sharing, k_LxGxPxKD, v_LxGxPxKD, seg_GxP, src_A, kvh)
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
    k_cache = k_cache.at[rows, write_S].set(cache_layout(k[:, 0]).astype(k_cache.dtype))
    v_cache = v_cache.at[rows, write_S].set(cache_layout(v[:, 0]).astype(v_cache.dtype))
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
        new_k.append(constrain_cache(kc, cfg.num_key_value_heads))
        new_v.append(constrain_cache(vc, cfg.num_key_value_heads))
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


def evict(state: SlotState, slot_E) -> SlotState:
    """Marks slots finished (a stop string the host found in their text)."""
    return state._replace(live_S=state.live_S.at[slot_E].set(False, mode="drop"))


# ---------------------------------------------------------------------------------------------- compiled programs
@dataclass(frozen=True)
class Programs:
    """The four programs that take and give the slot state, for one `Settings`, compiled to agree on its layout."""
    init: Callable[[Any], SlotState]  # params -> empty slots
    insert: Callable[..., SlotState]  # (params, state, pool, slot_A, src_A, prompt_key_Ax2, sample_A, sharing)
    decode: Callable[[Any, SlotState], tuple[SlotState, jax.Array]]  # (params, state) -> (state, steps run)
    evict: Callable[[SlotState, jax.Array], SlotState]  # (state, slot_E)


def abstract_state(graphdef, params, settings: Settings) -> SlotState:
    """The slot state's shapes and shardings as `init_slots` makes them; nothing is allocated (`params` may be
    abstract)."""
    lowered = jax.jit(functools.partial(init_slots, graphdef, settings=settings)).lower(params)
    shardings = lowered.compile().output_shardings
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), lowered.out_info, shardings)


def lower_decode(graphdef, params, settings: Settings, *, layout: str = "auto",
                 state: SlotState | None = None) -> jax.stages.Lowered:
    """The decode chunk lowered for the slot state as `init_slots` shards it, in and out (the state is donated), with
    its layout `"auto"` (left to the compiler, `Layout.AUTO`, as MaxText's engine lowers its generate step) or
    `"default"` (row-major). `state`: `abstract_state`'s result when the caller has it already."""
    if layout not in ("auto", "default"):
        raise ValueError(f"layout={layout!r}: choose 'auto' or 'default'")
    state = state if state is not None else abstract_state(graphdef, params, settings)
    place = (lambda x: Format(Layout.AUTO, x.sharding)) if layout == "auto" else (lambda x: x.sharding)
    formats = jax.tree.map(place, state)
    step = jax.jit(functools.partial(decode_chunk, graphdef, settings=settings), in_shardings=(None, formats),
                   out_shardings=(formats, None), donate_argnums=1)
    return step.lower(params, state)


def compile_decode(graphdef, params, settings: Settings) -> jax.stages.Compiled:
    """The decode chunk as the engine runs it. On a TPU the slot state's layout matters: the caches [S, T, K * D] fill
    the 128-lane tiles when K * D is a multiple of 128 (TinyLlama: 4 heads of 64), but in the default layout a cache of
    3 heads of 64 (SmolLM2-135M, 192 lanes) is padded and the compiler copies every buffer into its loop's layout at
    the chunk's start and back at its end, the copies held beside the buffers; in its own layout (`Layout.AUTO`) it
    copies none (bench/decode_layout.py: SmolLM2-135M's E-step chunk on a v5e 83 against 69 GB of HBM traffic and 7.7
    against 4.6 GB of memory per chip). For some shapes the compiler's layout moves more (a 2-layer model at 512
    positions and 16 slots per chip: 0.06 against 0.17 GB). So on a TPU both are compiled and the one that moves fewer
    HBM bytes per chunk (`bolt_jax.aot.hlo`, every step of the chunk counted, tile padding included) is kept, or the
    one that fits where the compiler refuses the other for memory (neither: `DoesNotFit`, in one line). Elsewhere
    the default layout, one compile: the CPU compiler's own choice is the default, and the GPUs' is unmeasured."""
    devices = jax.tree.leaves(params)[0].sharding.device_set
    platform = next(iter(devices)).platform
    layouts = ("default", "auto") if platform == "tpu" else ("default",)
    compiled, refusals = [], []
    try:
        state = abstract_state(graphdef, params, settings)  # one init compile for both layouts
    except Exception as e:  # noqa: BLE001 - the empty slots alone do not fit: no layout will
        if does_not_fit(e) is None:
            raise
        layouts, refusals = (), [e]
    for layout in layouts:
        try:
            compiled.append(lower_decode(graphdef, params, settings, layout=layout, state=state).compile())
        except Exception as e:  # noqa: BLE001 - a layout that does not fit leaves the other; anything else is a bug
            if does_not_fit(e) is None:
                raise
            refusals.append(e)
    if not compiled:
        raise DoesNotFit(f"the decode chunk for {settings.slots} slots x {settings.cache_len} positions does not fit "
                         f"on the {platform} ({does_not_fit(refusals[0])}); lower the decode slots, max_new_tokens or "
                         f"the prompt length") from refusals[0]

    def hbm_bytes(program) -> float:
        return hlo.analyze(program.as_text(), len(devices), unknown_trips=settings.steps_per_sync).hbm_bytes

    return min(compiled, key=hbm_bytes)


_PROGRAMS: dict[tuple, Programs] = {}
_MAX_PROGRAMS = 8  # settings kept compiled at once (an engine's bucket change adds one)


def programs(graphdef, params, settings: Settings) -> Programs:
    """The engine's programs for these settings and parameters (their shapes, dtypes and shardings): the decode chunk
    with the slot state in the layout `compile_decode` picks, and init, insert and evict producing the state in that
    layout and sharding, so it stays put between programs. Kept for reuse, keyed also by what is read when a program
    is traced: the decode attention the `auto` kernel choice resolves to (`kernels.DECODE_AUTO`) and the logical-axis
    rules in force (`parallel.current_rules()`, which shard the caches)."""
    key = (graphdef, settings, jax.tree.structure(params),
           tuple((x.shape, str(x.dtype), x.sharding) for x in jax.tree.leaves(params)),
           tuple(sorted(kernels.DECODE_AUTO.items())), parallel.current_rules())
    if key not in _PROGRAMS:
        decode = compile_decode(graphdef, params, settings)
        formats = decode.input_formats[0][1]
        _PROGRAMS[key] = Programs(
            init=jax.jit(functools.partial(init_slots, graphdef, settings=settings), out_shardings=formats),
            insert=jax.jit(functools.partial(insert, graphdef, settings=settings), out_shardings=formats,
                           donate_argnums=1),
            decode=decode,
            evict=jax.jit(evict, out_shardings=formats, donate_argnums=0))
        while len(_PROGRAMS) > _MAX_PROGRAMS:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
    return _PROGRAMS[key]
