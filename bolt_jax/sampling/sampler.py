"""Jitted batched sampler on the training mesh: one prefill, then `lax.while_loop` decoding from a static KV cache.

    result = generate(model, prompts, n=4, max_new_tokens=1024, temperature=1.0, stop_token_ids=[eol_id], seed=0)

Prompts are left-padded to a bucketed length so every row writes the same cache slot at each step; pad positions
carry segment id 0 and are never attended to. The n samples of a prompt share its prefill: the cache is computed
once per prompt and repeated n times along the batch. Each layer's cache `[batch, time, kv_heads * head_dim]` (a
position's KV heads side by side: `cache_layout`) is sharded over the batch like the training activations. Each row
draws from its own key (seed, row, step), so results do not depend on how the batch is sharded. log q of every token
is that of the distribution actually sampled from (bolt_jax.sampling.transforms). Each step attends with
`kernels.decode_attention` (on GPUs and TPUs a Pallas kernel that reads only the cache written so far), and the
layers' q/k/v and gate/up weights are concatenated once before the loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bolt_jax import kernels, parallel
from bolt_jax.aot.compiler import DoesNotFit
from bolt_jax.model.llama import (
    Llama,
    attention_inputs,
    attention_output_and_mlp,
    decoder_layer,
    fuse_projections,
    pure_dict,
    rms_norm,
    rope_cos_sin,
    unstack_layers,
)
from bolt_jax.sampling.transforms import sample_tokens, transform_logits

# Called from the host loop with how many requests (prompt x sample) just finished: a caller's progress display
# (evaluation's per-prompt bar). Only ever called where the host already holds the results, so it adds no device sync.
DoneCallback = Callable[[int], None]


@dataclass
class GenerationResult:
    """Samples in prompt-major order: sample j of prompt i is entry i * n + j."""
    tokens: list[list[int]]  # generated tokens, without the stop token (and cut before a stop string)
    token_logq: list[np.ndarray]  # log q of each generated token, the stop token included when one was generated
    logq: np.ndarray  # sum of token_logq
    done: np.ndarray  # stopped by a stop token or stop string (False: ran into max_new_tokens)
    lengths: np.ndarray  # len(tokens[i])
    texts: list[str] | None = None
    num_truncated_prompts: int = 0
    prompt_lengths: list[int] = field(default_factory=list)
    # scheduler, slots (rows decoded together), decode_steps, slot_occupancy (share of slot-steps that decoded a
    # live request), prefills
    stats: dict = field(default_factory=dict)


def _bucket(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def _to_host(x) -> np.ndarray:
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _place(array: np.ndarray, mesh) -> jax.Array:
    """A host array that every process holds in full -> a global array sharded over the batch axes."""
    if mesh is None:
        return jnp.asarray(array)
    sharding = parallel.batch_sharding(mesh, array.ndim)
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


CACHE_BLOCK = 128  # the cache is allocated in whole blocks of the decode kernel (unused slots: segment 0)


CACHE_AXES = ("batch", "cache_time", "act_kv_heads")


def cache_time(prompt_len: int, max_new_tokens: int) -> int:
    """Cache positions per row: prompt and new tokens, rounded up to whole decode-kernel blocks."""
    return -(-(prompt_len + max_new_tokens) // CACHE_BLOCK) * CACHE_BLOCK


def cache_layout(x_BxTxKxD):
    """K or V [B, T, K, D] as the caches hold it: [B, T, K * D], a position's KV heads side by side. On a TPU a
    [.., K, D] buffer with head_dim 64 fills half of the 128 lanes (stored, read and copied at twice its size); side
    by side they fill them (kernels.decode_tpu). On CPUs and GPUs the same bytes as [B, T, K, D]."""
    return x_BxTxKxD.reshape(*x_BxTxKxD.shape[:-2], x_BxTxKxD.shape[-2] * x_BxTxKxD.shape[-1])


def constrain_cache(x_BxTxKD, kv_heads: int):
    """A cache buffer's sharding: rows over the batch axes, and KV heads over `tensor` only where it divides the
    heads (never a head split across devices: the decode kernels run on whole heads per device)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x_BxTxKD
    spec = parallel.logical_to_spec(CACHE_AXES, mesh=mesh, shape=x_BxTxKD.shape[:2] + (kv_heads,))
    return jax.lax.with_sharding_constraint(x_BxTxKD, spec)


def decode_step_layer(cfg, h_Bx1xD, p, cos, sin, k_cache_BxTxKD, v_cache_BxTxKD, kv_seg_BxT, write_index,
                      decode_impl: str = "auto"):
    """One layer for one new token: project, write k/v into the cache slot, attend over the cache written so far."""
    q, k, v = attention_inputs(cfg, h_Bx1xD, p, cos, sin)
    k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache_BxTxKD, cache_layout(k).astype(k_cache_BxTxKD.dtype),
                                                  write_index, 1)
    v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache_BxTxKD, cache_layout(v).astype(v_cache_BxTxKD.dtype),
                                                  write_index, 1)
    lengths = jnp.full(h_Bx1xD.shape[:1], write_index + 1, jnp.int32)
    attn = kernels.decode_attention(q, k_cache, v_cache, kv_segment_ids_BxT=kv_seg_BxT, lengths_B=lengths,
                                    sm_scale=cfg.head_size ** -0.5, impl=decode_impl)
    return attention_output_and_mlp(cfg, h_Bx1xD, attn, p), (k_cache, v_cache)


def decode_impl_of(cfg) -> str:
    """The decode attention kernel (`kernels.DECODE_IMPLS`) the model config asks for (`LlamaConfig.decode_impl`;
    `auto`: `kernels.DECODE_AUTO` per backend). The config is static under jit (in the graphdef), so this is read
    at trace time and a different choice is a different compiled program."""
    return cfg.decode_impl


# ---------------------------------------------------------------------------------------------- on the device
class _DecodeState(NamedTuple):
    """The `lax.while_loop` carry: step t samples token t (token 0 came from the prefill's last logits)."""
    t: jax.Array
    last_tok_B: jax.Array
    k_cache: tuple[jax.Array, ...]  # one [B, T, K * D] buffer per layer
    v_cache: tuple[jax.Array, ...]
    kv_seg_BxT: jax.Array
    out_tokens: jax.Array  # [B, max_new_tokens]
    out_logq: jax.Array  # [B, max_new_tokens]
    done_B: jax.Array
    length_B: jax.Array


def _prefill(model: Llama, layer_params, prompt_BxP, pad_B):
    """Runs the left-padded prompts through the model with the training attention kernel (segment 0 = padding).

    Returns the last position's logits [B, V], every layer's k and v [L, B, P, K * D] (`cache_layout`) in the compute
    dtype, and the prompt's segment ids [B, P]."""
    cfg = model.config
    p_len = prompt_BxP.shape[1]
    dtype = cfg.jnp_compute_dtype
    idx = jnp.arange(p_len, dtype=jnp.int32)[None, :]
    positions = jnp.maximum(idx - pad_B[:, None], 0)
    seg_BxP = (idx >= pad_B[:, None]).astype(jnp.int32)
    cos, sin = rope_cos_sin(positions, cfg.head_size, cfg.rope_theta)
    h = model.embed(prompt_BxP)

    def prefill_layer(h, p):
        h, (k, v) = decoder_layer(cfg, h, p, cos, sin, seg_BxP)
        return h, (cache_layout(k).astype(dtype), cache_layout(v).astype(dtype))

    h, (k_LxBxPxKD, v_LxBxPxKD) = jax.lax.scan(prefill_layer, h, layer_params)
    last = rms_norm(h[:, -1:], model.norm.weight[...], cfg.rms_norm_eps)
    logits_BxV = model.logits_from_hidden(last)[:, 0]
    return logits_BxV, k_LxBxPxKD, v_LxBxPxKD, seg_BxP


def _share_prefill(cfg, k_LxBxPxKD, v_LxBxPxKD, seg_BxP, *, n: int, max_new_tokens: int):
    """The prefill's cache repeated for the n samples of each prompt: one buffer per layer, sharded over the batch
    and padded to whole decode-kernel blocks. Returns (k_cache, v_cache, kv_seg [B * n, T])."""
    rep = lambda x, axis: jnp.repeat(x, n, axis=axis)  # noqa: E731
    # Decoding unrolls the layers, with one cache buffer per layer: each step then updates every buffer in place and
    # attention reads it where it lies. Scanning over stacked [L, ...] caches instead copied the whole cache every
    # step (the scan's stacked outputs): on an H100 that reached 7% of the memory-bandwidth bound, this 32%.
    n_layers = cfg.num_hidden_layers
    p_len = seg_BxP.shape[1]
    cache_pad = cache_time(p_len, max_new_tokens) - p_len
    pad_time = ((0, 0), (0, cache_pad), (0, 0))
    kvh = cfg.num_key_value_heads
    k_cache = tuple(constrain_cache(jnp.pad(rep(k_LxBxPxKD[i], 0), pad_time), kvh) for i in range(n_layers))
    v_cache = tuple(constrain_cache(jnp.pad(rep(v_LxBxPxKD[i], 0), pad_time), kvh) for i in range(n_layers))
    kv_seg = jnp.pad(rep(seg_BxP, 0), ((0, 0), (0, cache_pad)))
    return k_cache, v_cache, kv_seg


def _row_keys(prompt_keys_Bx2, n: int):
    """Sample j of prompt i draws from fold_in(key_i, j), then fold_in(., step): nothing depends on batch layout."""
    b = prompt_keys_Bx2.shape[0]
    sample_index = jnp.tile(jnp.arange(n, dtype=jnp.uint32), b)
    return jax.vmap(lambda k, j: jax.random.fold_in(jax.random.wrap_key_data(k), j))(
        jnp.repeat(prompt_keys_Bx2, n, axis=0), sample_index)


def _make_pick(cfg, row_keys, *, temperature: float, top_k: int, top_p: float, greedy: bool,
               banned_ids: tuple[int, ...]):
    """pick(logits [B, V], step) -> (tokens [B], log q [B]): transform the logits, then draw with each row's key."""
    banned = jnp.zeros((cfg.vocab_size,), bool).at[jnp.asarray(banned_ids, jnp.int32)].set(True) \
        if banned_ids else None

    def pick(logits, t):
        keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys)
        x = transform_logits(logits, temperature=1.0 if greedy else temperature, top_k=0 if greedy else top_k,
                             top_p=1.0 if greedy else top_p, banned_mask_V=banned)
        return sample_tokens(keys, x, greedy)

    return pick


def _record_token(s: _DecodeState, tok, lq, stop, **updates) -> _DecodeState:
    """Step t's token and log q written into the outputs (0 for rows already done), lengths and stop flags."""
    tok = jnp.where(s.done_B, 0, tok)
    lq = jnp.where(s.done_B, 0.0, lq)
    out_tokens = jax.lax.dynamic_update_slice_in_dim(s.out_tokens, tok[:, None], s.t, 1)
    out_logq = jax.lax.dynamic_update_slice_in_dim(s.out_logq, lq[:, None], s.t, 1)
    length = s.length_B + (~s.done_B).astype(jnp.int32)
    done = s.done_B | jnp.isin(tok, stop)
    return s._replace(t=s.t + 1, last_tok_B=tok, out_tokens=out_tokens, out_logq=out_logq, done_B=done,
                      length_B=length, **updates)


def _decode_step(model: Llama, layers, pick, stop, first_pos_B, p_len: int, decode_impl: str,
                 s: _DecodeState) -> _DecodeState:
    """The loop body: one new token per row. Embed the last token, run every layer against its cache slot at
    `p_len + t - 1`, then logits -> transforms -> sample -> log q and stop bookkeeping."""
    cfg = model.config
    bn = s.last_tok_B.shape[0]
    write = p_len + s.t - 1
    kv_seg = jax.lax.dynamic_update_slice_in_dim(s.kv_seg_BxT, jnp.ones((bn, 1), jnp.int32), write, 1)
    pos = (first_pos_B + s.t - 1)[:, None]
    cos, sin = rope_cos_sin(pos, cfg.head_size, cfg.rope_theta)
    h = model.embed(s.last_tok_B[:, None])

    new_k, new_v = [], []
    for p, kc, vc in zip(layers, s.k_cache, s.v_cache, strict=True):
        h, (kc, vc) = decode_step_layer(cfg, h, p, cos, sin, kc, vc, kv_seg, write, decode_impl=decode_impl)
        new_k.append(kc)
        new_v.append(vc)
    h = rms_norm(h, model.norm.weight[...], cfg.rms_norm_eps)
    tok, lq = pick(model.logits_from_hidden(h)[:, 0], s.t)
    return _record_token(s, tok, lq, stop, k_cache=tuple(new_k), v_cache=tuple(new_v), kv_seg_BxT=kv_seg)


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "max_new_tokens", "temperature", "top_k", "top_p",
                                             "greedy", "stop_ids", "banned_ids"))
def _generate_core(graphdef, params, prompt_BxP, pad_B, prompt_keys_Bx2, *, n: int, max_new_tokens: int,
                   temperature: float, top_k: int, top_p: float, greedy: bool, stop_ids: tuple[int, ...],
                   banned_ids: tuple[int, ...]):
    """Prefill, the first token, then the decode loop. Returns tokens, log q [B * n, max_new_tokens], done, length."""
    model: Llama = nnx.merge(graphdef, params)
    cfg = model.config
    b, p_len = prompt_BxP.shape
    layer_params = model.layers.stacked_params()
    logits_BxV, k_LxBxPxKD, v_LxBxPxKD, seg_BxP = _prefill(model, layer_params, prompt_BxP, pad_B)

    # ---- share the prefill among the n samples of each prompt
    bn = b * n
    layers = [fuse_projections(p) for p in unstack_layers(layer_params, cfg.num_hidden_layers)]
    k_cache, v_cache, kv_seg = _share_prefill(cfg, k_LxBxPxKD, v_LxBxPxKD, seg_BxP, n=n,
                                              max_new_tokens=max_new_tokens)
    logits_BxV = jnp.repeat(logits_BxV, n, axis=0)
    first_pos = jnp.repeat(p_len - pad_B, n, axis=0)
    pick = _make_pick(cfg, _row_keys(prompt_keys_Bx2, n), temperature=temperature, top_k=top_k, top_p=top_p,
                      greedy=greedy, banned_ids=banned_ids)
    stop = jnp.asarray(stop_ids if stop_ids else (-1,), jnp.int32)

    tok0, lq0 = pick(logits_BxV, 0)
    state = _DecodeState(
        t=jnp.int32(1), last_tok_B=tok0, k_cache=k_cache, v_cache=v_cache, kv_seg_BxT=kv_seg,
        out_tokens=jnp.zeros((bn, max_new_tokens), jnp.int32).at[:, 0].set(tok0),
        out_logq=jnp.zeros((bn, max_new_tokens), jnp.float32).at[:, 0].set(lq0),
        done_B=jnp.isin(tok0, stop), length_B=jnp.ones((bn,), jnp.int32))

    def cond(s: _DecodeState):
        return (s.t < max_new_tokens) & ~jnp.all(s.done_B)

    body = functools.partial(_decode_step, model, layers, pick, stop, first_pos, p_len, decode_impl_of(cfg))
    s = jax.lax.while_loop(cond, body, state)
    return s.out_tokens, s.out_logq, s.done_B, s.length_B


# ---------------------------------------------------------------------------------------------- on the host
def check_sampling_args(n: int, max_new_tokens: int, stop_strings: Sequence[str], tokenizer, *,
                        temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
                        stop_token_ids: Sequence[int] = (), banned_token_ids: Sequence[int] = (),
                        vocab_size: int | None = None) -> None:
    """Refuses arguments that would sample from something other than what was asked (one-line ValueErrors).

    temperature=0 without greedy is refused: HF transformers refuses it when sampling (do_sample=True) and vLLM
    quietly turns it into greedy decoding; here greedy decoding is asked for by name (greedy=True)."""
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer (to decode the generated text)")
    if not n >= 1:
        raise ValueError(f"n={n!r} must be >= 1")
    if not max_new_tokens >= 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be >= 1")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0 only with greedy=True)")
    if temperature == 0 and not greedy:
        raise ValueError("temperature=0 needs greedy=True; sampling needs temperature > 0 (HF refuses temperature=0 "
                         "when sampling, vLLM silently decodes greedily)")
    if not top_k >= 0:
        raise ValueError(f"top_k={top_k!r} must be >= 0 (0 = off; vLLM's -1 is 0 here)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1 = off); top_p=0 would mask every token")
    if vocab_size is not None:
        for name, ids in (("stop_token_ids", stop_token_ids), ("banned_token_ids", banned_token_ids)):
            bad = sorted({int(i) for i in ids if not 0 <= int(i) < vocab_size})
            if bad:
                raise ValueError(f"{name} {bad[:8]} must be in [0, vocab_size={vocab_size})")
        if len({int(i) for i in banned_token_ids}) >= vocab_size:
            raise ValueError(f"banned_token_ids ban all {vocab_size} tokens of the vocabulary: at least one token "
                             f"must stay allowed")


def _truncate_prompts(cfg, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      max_prompt_len: int | None) -> tuple[list[list[int]], int]:
    """Prompts cut on the left to the room the positions leave (or `max_prompt_len`), and how many were cut."""
    limit = max_prompt_len or (cfg.max_position_embeddings - max_new_tokens)
    if limit < 1:
        raise ValueError(f"no room for the prompt: max_prompt_len={max_prompt_len}, "
                         f"max_position_embeddings={cfg.max_position_embeddings}, max_new_tokens={max_new_tokens}")
    truncated = sum(len(p) > limit for p in prompts)
    prompts = [list(p)[-limit:] for p in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token (e.g. BOS)")
    return prompts, truncated


def _batch_rows(num_prompts: int, batch_bucket: int, mesh) -> int:
    """Rows of the compiled batch: the prompts rounded up to whole buckets that the mesh's batch axes divide."""
    divisor = parallel.batch_divisor(mesh) if mesh is not None else 1
    step = math.lcm(batch_bucket, divisor)
    return math.ceil(num_prompts / step) * step


def _left_pad(prompts: list[list[int]], b: int, p_len: int) -> tuple[np.ndarray, np.ndarray]:
    """[b, p_len] tokens with every prompt at the right end (rows past the prompts repeat the first) and the pad
    length of each row."""
    prompt_np = np.zeros((b, p_len), np.int32)
    pad_np = np.full((b,), p_len - 1, np.int32)
    for i in range(b):
        src = prompts[i] if i < len(prompts) else prompts[0]
        prompt_np[i, p_len - len(src):] = src
        pad_np[i] = p_len - len(src)
    return prompt_np, pad_np


def _prompt_keys(b: int, num_prompts: int, seed: int, prompt_seeds: Sequence[int] | None) -> np.ndarray:
    """Raw key data [b, 2] uint32: PRNGKey(prompt_seeds[i]) when given, else fold_in(PRNGKey(seed), i)."""
    if prompt_seeds is not None:
        if len(prompt_seeds) != num_prompts:
            raise ValueError(f"{len(prompt_seeds)} prompt_seeds for {num_prompts} prompts")
        keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(list(prompt_seeds) + [0] * (b - num_prompts), jnp.uint32))
    else:
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(jnp.arange(b, dtype=jnp.uint32))
    return np.asarray(jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys,
                      np.uint32)


def _finish_row(seq: list[int], lq: np.ndarray, finished: bool, stop_set: set[int], tokenizer,
                stop_strings: Sequence[str]):
    """One row's (tokens, log q, done, text): the stop token dropped from the tokens, the text cut at a stop string."""
    if finished and seq and seq[-1] in stop_set:
        seq = seq[:-1]  # the stop token is not part of the text; its log q stays in the sum
    text = tokenizer.decode(seq) if tokenizer is not None else None
    if stop_strings and text is not None:
        cut = _cut_at_stop_string(seq, tokenizer, stop_strings)
        if cut is not None:
            seq, text, finished = seq[:cut[0]], cut[1], True
            lq = lq[:cut[0] + 1]  # up to the token that completed the stop string
    return seq, lq, finished, text


def _assemble(out, prompts: list[list[int]], *, n: int, stop_token_ids: Sequence[int],
              stop_strings: Sequence[str], tokenizer, truncated: int) -> GenerationResult:
    """The device outputs brought to the host and cut into the result's per-sample lists (padding rows dropped)."""
    tokens_np, logq_np, done_np, length_np = (_to_host(x) for x in out)
    stop_set = set(int(i) for i in stop_token_ids)
    tokens, token_logq, done, lengths, texts = [], [], [], [], []
    for r in range(len(prompts) * n):
        seq, lq, finished, text = _finish_row(tokens_np[r, :length_np[r]].tolist(), logq_np[r, :length_np[r]],
                                              bool(done_np[r]), stop_set, tokenizer, stop_strings)
        tokens.append(seq)
        token_logq.append(np.asarray(lq, np.float64))
        done.append(finished)
        lengths.append(len(seq))
        texts.append(text)
    return GenerationResult(tokens=tokens, token_logq=token_logq, logq=np.array([x.sum() for x in token_logq]),
                            done=np.array(done), lengths=np.array(lengths),
                            texts=texts if tokenizer is not None else None, num_truncated_prompts=truncated,
                            prompt_lengths=[len(p) for p in prompts])


def generate(model: Llama, prompts: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int = 256,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             stop_token_ids: Sequence[int] = (), stop_strings: Sequence[str] = (),
             banned_token_ids: Sequence[int] = (), max_prompt_len: int | None = None, seed: int = 0,
             prompt_seeds: Sequence[int] | None = None, mesh=None, tokenizer=None,
             batch_bucket: int = 8, max_cache_bytes: int | None = None,
             on_done: DoneCallback | None = None) -> GenerationResult:
    """Samples `n` continuations per prompt (token id lists) as one static batch. See the module docstring;
    `bolt_jax.sampling.generate` chooses between this and the continuous engine. `on_done(len(prompts) * n)` is
    called once, when the batch's results are on the host (a static batch finishes all its requests together).

    Randomness: prompt i uses key fold_in(PRNGKey(seed), i), or PRNGKey(prompt_seeds[i]) when given, so a prompt's
    samples can be made independent of which batch, slice or process it lands in."""
    if not prompts:
        return GenerationResult([], [], np.zeros(0), np.zeros(0, bool), np.zeros(0, int), [] if tokenizer else None)
    check_sampling_args(n, max_new_tokens, stop_strings, tokenizer, temperature=temperature, top_k=top_k, top_p=top_p,
                greedy=greedy, stop_token_ids=stop_token_ids, banned_token_ids=banned_token_ids,
                vocab_size=model.config.vocab_size)
    cfg = model.config
    prompts, truncated = _truncate_prompts(cfg, prompts, max_new_tokens, max_prompt_len)
    p_len = _bucket(max(len(p) for p in prompts))
    b = _batch_rows(len(prompts), batch_bucket, mesh)
    check_cache_fits(cfg, rows=b * n, time=cache_time(p_len, max_new_tokens), mesh=mesh, limit_bytes=max_cache_bytes)
    prompt_np, pad_np = _left_pad(prompts, b, p_len)
    keys_np = _prompt_keys(b, len(prompts), seed, prompt_seeds)
    graphdef, state = nnx.split(model)
    params = pure_dict(state)
    ctx = jax.set_mesh(mesh) if mesh is not None else _null()
    with ctx:
        out = _generate_core(graphdef, params, _place(prompt_np, mesh), _place(pad_np, mesh), _place(keys_np, mesh),
                             n=n,
                             max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=int(top_k),
                             top_p=float(top_p), greedy=bool(greedy), stop_ids=tuple(int(i) for i in stop_token_ids),
                             banned_ids=tuple(sorted(int(i) for i in banned_token_ids)))
    result = _assemble(out, prompts, n=n, stop_token_ids=stop_token_ids, stop_strings=stop_strings,
                       tokenizer=tokenizer, truncated=truncated)
    if on_done is not None:
        on_done(len(prompts) * n)
    lengths = _to_host(out[3])
    steps = int(lengths.max()) - 1  # decode steps after the prefill's token
    useful = int(lengths[:len(prompts) * n].sum()) - len(prompts) * n
    result.stats = {"scheduler": "static", "slots": b * n, "decode_steps": steps,
                    "slot_occupancy": useful / (steps * b * n) if steps > 0 else 1.0, "prefills": 1}
    return result


def cache_bytes(cfg, rows: int, time: int) -> int:
    """Bytes of the K and V caches [layers, rows, time, kv_heads * head_dim] in the compute dtype."""
    return 2 * cfg.num_hidden_layers * rows * time * cfg.kv_size * jnp.dtype(cfg.jnp_compute_dtype).itemsize


def check_cache_fits(cfg, *, rows: int, time: int, mesh=None, limit_bytes: int | None = None,
                     shared_rows: int = 0, shared_time: int = 0) -> int:
    """Refuses a batch whose KV cache cannot fit next to what the device already holds, before compiling it.

    Per device, the cache is its share of the batch (sharded over data x fsdp), plus the shared prompt entries of
    prefix sharing (`shared_rows` x `shared_time`). The limit is `limit_bytes` when given, else the device's free
    memory as its allocator reports it (none on CPU: no check there)."""
    total = cache_bytes(cfg, rows, time) + cache_bytes(cfg, shared_rows, shared_time)
    per_device = total // (parallel.batch_divisor(mesh) if mesh is not None else 1)
    if limit_bytes is None:
        stats = jax.local_devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            limit_bytes = int(0.9 * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    if limit_bytes is not None and per_device > limit_bytes:
        raise DoesNotFit(
            f"the KV cache for {rows} rows x {time} positions needs {per_device / 2**30:.2f} GiB per device, more "
            f"than the {limit_bytes / 2**30:.2f} GiB available; lower the batch, max_new_tokens or the prompt length")
    return per_device


def _cut_at_stop_string(seq: list[int], tokenizer, stop_strings: Sequence[str]):
    """(number of tokens before the one completing the earliest stop string, text before the stop string)."""
    text = tokenizer.decode(seq)
    hits = [text.find(s) for s in stop_strings if s and text.find(s) >= 0]
    if not hits:
        return None
    first = min(hits)
    for i in range(1, len(seq) + 1):
        if len(tokenizer.decode(seq[:i])) > first:
            return i - 1, text[:first]
    return len(seq), text[:first]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
