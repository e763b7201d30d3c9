"""Llama in Flax NNX, in Hugging Face layout (rotate-half RoPE, HF parameter names, kernels stored [in, out]).

Decoder layers are stored stacked (a leading `layers` axis on every layer parameter) and run with `lax.scan`, so
compile time does not grow with depth. Parameter path `layers/self_attn/q_proj/kernel[i]` is HF's
`model.layers.{i}.self_attn.q_proj.weight` transposed; the converter relies on exactly this.

Precision: parameters in `param_dtype` (fp32 master weights), matmuls in `compute_dtype` (bf16), norms and softmax
statistics in fp32, logits returned in fp32 for the loss.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from bolt_jax import kernels
from bolt_jax.model.config import REMAT_POLICIES, LlamaConfig
from bolt_jax.parallel import constrain


# ---------------------------------------------------------------------------------------------- pure functions
def rms_norm(x, weight, eps: float):
    """HF LlamaRMSNorm: normalise in fp32, cast back, then scale."""
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * weight.astype(x.dtype)


@jax.custom_vjp
def head_logits(h_BxSxD, kernel_DxV):
    """fp32 logits from compute-dtype operands (fp32 accumulation on the tensor cores).

    The custom backward rounds the fp32 logit cotangent to the operands' dtype before the two transposed products;
    JAX's own rule would promote them to fp32 x fp32 matmuls (tf32 on a GPU, half the bf16 rate) at the model's
    largest matmuls. Rounding an activation gradient to bf16 is what every other matmul of the model does already.
    """
    return jnp.einsum("...d,dv->...v", h_BxSxD, kernel_DxV, preferred_element_type=jnp.float32)


def _head_logits_fwd(h, kernel):
    return head_logits(h, kernel), (h, kernel)


def _head_logits_bwd(res, g):
    h, kernel = res
    g = g.astype(h.dtype)
    dh = jnp.einsum("...v,dv->...d", g, kernel, preferred_element_type=jnp.float32).astype(h.dtype)
    dk = jnp.einsum("...d,...v->dv", h, g, preferred_element_type=jnp.float32).astype(kernel.dtype)
    return dh, dk


head_logits.defvjp(_head_logits_fwd, _head_logits_bwd)


@jax.custom_vjp
def swiglu(gate, up):
    """silu(gate) * up, the Llama MLP's activation, with a backward that keeps only `gate` and `up`.

    Autodiff keeps silu(gate) for the backward as well. jax 0.12.1's XLA expands the sigmoid into a numerically stable
    form that its fusion no longer recomputes in the backward, so the forward writes silu(gate) out: one more
    activation of the MLP's width per layer (TinyLlama's step at micro-batch 16 x 2048 for an H100: 7.6 GiB more
    before XLA's own rematerialization, 61.12 GiB against 57.12 after it; BENCHMARKS.md). This backward rebuilds the
    sigmoid from `gate` in fp32 inside the fusion that computes both gradients, and rounds each gradient once."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_bwd(res, g):
    gate, up = res
    gate32, up32, g32 = gate.astype(jnp.float32), up.astype(jnp.float32), g.astype(jnp.float32)
    sig = jax.nn.sigmoid(gate32)
    silu = gate32 * sig
    d_gate = g32 * up32 * sig * (1.0 + gate32 * (1.0 - sig))
    return d_gate.astype(gate.dtype), (g32 * silu).astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def rope_cos_sin(positions_BxS, head_dim: int, theta: float):
    """cos/sin [B, S, head_dim] in fp32, HF default RoPE (frequencies repeated for the two halves)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_BxSxF = positions_BxS.astype(jnp.float32)[..., None] * inv_freq
    angles_BxSxD = jnp.concatenate([angles_BxSxF, angles_BxSxF], axis=-1)
    return jnp.cos(angles_BxSxD), jnp.sin(angles_BxSxD)


def apply_rope(x_BxSxHxD, cos_BxSxD, sin_BxSxD):
    """HF's rotate-half RoPE. The rotation (-x2, x1) is written as a reversal of the two halves and a sign, which
    XLA fuses into the multiply-adds (no concatenate)."""
    half = x_BxSxHxD.shape[-1] // 2
    halves = x_BxSxHxD.reshape(*x_BxSxHxD.shape[:-1], 2, half)
    sign = jnp.asarray([-1, 1], x_BxSxHxD.dtype)[:, None]
    rotated = (halves[..., ::-1, :] * sign).reshape(x_BxSxHxD.shape)
    cos = cos_BxSxD[:, :, None, :].astype(x_BxSxHxD.dtype)
    sin = sin_BxSxD[:, :, None, :].astype(x_BxSxHxD.dtype)
    return x_BxSxHxD * cos + rotated * sin


def _dense(x, kernel, dtype):
    return jnp.einsum("...i,io->...o", x, kernel.astype(dtype))


# jax.checkpoint policy per LlamaConfig.remat_policy name (the names live in bolt_jax.model.config; "none": no remat)
CHECKPOINT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attn_out": jax.checkpoint_policies.save_only_these_names("attn_out"),
}
assert set(CHECKPOINT_POLICIES) | {"none"} == set(REMAT_POLICIES)


def attention_inputs(cfg: LlamaConfig, h_BxSxD, p: dict[str, Any], cos_BxSxD, sin_BxSxD):
    """Pre-norm and q/k/v projections with RoPE: the part of a layer before attention (shared with decoding)."""
    dtype = cfg.jnp_compute_dtype
    b, s, _ = h_BxSxD.shape
    hd = cfg.head_size
    x = rms_norm(h_BxSxD, p["input_layernorm"]["weight"], cfg.rms_norm_eps)
    attn_p = p["self_attn"]
    if "qkv_kernel" in attn_p:  # pre-fused (fuse_projections): one matmul
        q, k, v = jnp.split(_dense(x, attn_p["qkv_kernel"], dtype), [cfg.q_size, cfg.q_size + cfg.kv_size], axis=-1)
    else:
        q, k, v = (_dense(x, attn_p[name]["kernel"], dtype) for name in ("q_proj", "k_proj", "v_proj"))
    q = q.reshape(b, s, cfg.num_attention_heads, hd)
    k = k.reshape(b, s, cfg.num_key_value_heads, hd)
    v = v.reshape(b, s, cfg.num_key_value_heads, hd)
    q = constrain(apply_rope(q, cos_BxSxD, sin_BxSxD), ("batch", "act_seq", "act_heads", "act_head_dim"))
    k = constrain(apply_rope(k, cos_BxSxD, sin_BxSxD), ("batch", "act_seq", "act_kv_heads", "act_head_dim"))
    v = constrain(v, ("batch", "act_seq", "act_kv_heads", "act_head_dim"))
    return q, k, v


def attention_output_and_mlp(cfg: LlamaConfig, h_BxSxD, attn_BxSxHxD, p: dict[str, Any]):
    """o_proj + residual, then the SwiGLU MLP + residual: the part of a layer after attention."""
    dtype = cfg.jnp_compute_dtype
    b, s, _ = h_BxSxD.shape
    attn = checkpoint_name(attn_BxSxHxD, "attn_out")
    h_BxSxD = h_BxSxD + _dense(attn.reshape(b, s, cfg.q_size), p["self_attn"]["o_proj"]["kernel"], dtype)
    h_BxSxD = constrain(h_BxSxD, ("batch", "act_seq", "act_embed"))
    x = rms_norm(h_BxSxD, p["post_attention_layernorm"]["weight"], cfg.rms_norm_eps)
    if "gate_up_kernel" in p["mlp"]:
        gate, up = jnp.split(_dense(x, p["mlp"]["gate_up_kernel"], dtype), 2, axis=-1)
    else:
        gate = _dense(x, p["mlp"]["gate_proj"]["kernel"], dtype)
        up = _dense(x, p["mlp"]["up_proj"]["kernel"], dtype)
    act = constrain(swiglu(gate, up), ("batch", "act_seq", "act_mlp"))
    h_BxSxD = h_BxSxD + _dense(act, p["mlp"]["down_proj"]["kernel"], dtype)
    return constrain(h_BxSxD, ("batch", "act_seq", "act_embed"))


def fuse_projections(p: dict[str, Any]) -> dict[str, Any]:
    """A layer's parameters with q/k/v and gate/up concatenated, for loops that apply the same layer many times.

    XLA merges sibling matmuls that share an input by concatenating their weights; inside the sampler's decode loop
    that concatenate ran every step, twice per layer (about a sixth of a TinyLlama decode step at batch 256 on an
    H100, bench/sampler.py --profile). Concatenated once before the loop, each layer has two single matmuls."""
    attn, mlp = p["self_attn"], p["mlp"]
    qkv = jnp.concatenate([attn[n]["kernel"] for n in ("q_proj", "k_proj", "v_proj")], axis=-1)
    gate_up = jnp.concatenate([mlp["gate_proj"]["kernel"], mlp["up_proj"]["kernel"]], axis=-1)
    return {**p, "self_attn": {"qkv_kernel": qkv, "o_proj": attn["o_proj"]},
            "mlp": {"gate_up_kernel": gate_up, "down_proj": mlp["down_proj"]}}


def decoder_layer(cfg: LlamaConfig, h_BxSxD, p: dict[str, Any], cos_BxSxD, sin_BxSxD, segment_ids_BxS,
                  kv_cache=None):
    """One Llama block on the layer's parameter slice `p`. Returns (h, (k, v)) so callers can fill a KV cache."""
    q, k, v = attention_inputs(cfg, h_BxSxD, p, cos_BxSxD, sin_BxSxD)
    attn = kernels.attention(q, k, v, segment_ids=segment_ids_BxS, causal=True, sm_scale=cfg.head_size ** -0.5,
                             impl=cfg.attention_impl)
    return attention_output_and_mlp(cfg, h_BxSxD, attn, p), (k, v)


# ---------------------------------------------------------------------------------------------- modules
def pure_dict(state) -> dict[str, Any]:
    """An NNX state as a nested dict of arrays (`nnx.to_pure_dict` where this flax has it)."""
    if hasattr(nnx, "to_pure_dict"):
        return nnx.to_pure_dict(state)
    return state.to_pure_dict()


def _normal(rngs: nnx.Rngs, shape, std: float, dtype):
    return std * jax.random.normal(rngs.params(), shape, dtype=dtype)


class Linear(nnx.Module):
    """Bias-free projection; `kernel` is [in, out] (HF's weight transposed), possibly with a leading layers axis."""

    def __init__(self, shape: tuple[int, ...], axes: tuple[str, ...], cfg: LlamaConfig, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_normal(rngs, shape, cfg.initializer_range, cfg.jnp_param_dtype), axes=axes)


class RMSNorm(nnx.Module):
    def __init__(self, shape: tuple[int, ...], axes: tuple[str, ...], cfg: LlamaConfig):
        self.weight = nnx.Param(jnp.ones(shape, cfg.jnp_param_dtype), axes=axes)


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        L, d = (cfg.num_hidden_layers,), cfg.hidden_size
        self.q_proj = Linear(L + (d, cfg.q_size), ("layers", "embed", "q_heads"), cfg, rngs)
        self.k_proj = Linear(L + (d, cfg.kv_size), ("layers", "embed", "kv_heads"), cfg, rngs)
        self.v_proj = Linear(L + (d, cfg.kv_size), ("layers", "embed", "kv_heads"), cfg, rngs)
        self.o_proj = Linear(L + (cfg.q_size, d), ("layers", "q_heads", "embed"), cfg, rngs)


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        L, d, f = (cfg.num_hidden_layers,), cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(L + (d, f), ("layers", "embed", "mlp"), cfg, rngs)
        self.up_proj = Linear(L + (d, f), ("layers", "embed", "mlp"), cfg, rngs)
        self.down_proj = Linear(L + (f, d), ("layers", "mlp", "embed"), cfg, rngs)


def unstack_layers(params, n_layers: int) -> list:
    """Per-layer views of stacked [L, ...] parameters, for unrolled layers.

    Split, not indexing: the gradient of a split is one concatenate, while the gradient of 22 separate `x[i]` is a sum
    of 22 zero-padded copies, which XLA fused into reductions that read every stacked gradient 22 times (a fifth of an
    H100 TinyLlama step, measured; BENCHMARKS.md).
    """
    leaves, treedef = jax.tree.flatten(params)
    pieces = [jnp.split(x, n_layers, axis=0) for x in leaves]
    return [treedef.unflatten([p[i][0] for p in pieces]) for i in range(n_layers)]


class DecoderStack(nnx.Module):
    """All decoder layers, parameters stacked along a leading `layers` axis."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        L, d = (cfg.num_hidden_layers,), cfg.hidden_size
        self.input_layernorm = RMSNorm(L + (d,), ("layers", "norm"), cfg)
        self.self_attn = Attention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(L + (d,), ("layers", "norm"), cfg)
        self.mlp = MLP(cfg, rngs)

    def stacked_params(self) -> dict[str, Any]:
        """The layer parameters as a nested dict of arrays [L, ...], the form `lax.scan` slices."""
        return pure_dict(nnx.state(self, nnx.Param))

    def __call__(self, cfg: LlamaConfig, h_BxSxD, cos_BxSxD, sin_BxSxD, segment_ids_BxS):
        params = self.stacked_params()
        layer = functools.partial(decoder_layer, cfg)

        def body(h, p):
            h, _ = layer(h, p, cos_BxSxD, sin_BxSxD, segment_ids_BxS)
            return h, None

        if cfg.remat_policy != "none":
            body = jax.checkpoint(body, policy=CHECKPOINT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            h_BxSxD, _ = jax.lax.scan(body, h_BxSxD, params)
        else:
            for p in unstack_layers(params, cfg.num_hidden_layers):
                h_BxSxD, _ = body(h_BxSxD, p)
        return h_BxSxD


class Llama(nnx.Module):
    """LlamaForCausalLM. `__call__(tokens, positions, segment_ids)` returns fp32 logits [B, S, V]."""

    def __init__(self, cfg: LlamaConfig, rngs: nnx.Rngs):
        self.config = cfg
        d, v = cfg.hidden_size, cfg.vocab_size
        self.embed_tokens = nnx.Param(_normal(rngs, (v, d), cfg.initializer_range, cfg.jnp_param_dtype),
                                      axes=("vocab", "embed"))
        self.layers = DecoderStack(cfg, rngs)
        self.norm = RMSNorm((d,), ("norm",), cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear((d, v), ("embed", "vocab"), cfg, rngs)

    def embed(self, tokens_BxS):
        h = jnp.take(self.embed_tokens[...], tokens_BxS, axis=0).astype(self.config.jnp_compute_dtype)
        return constrain(h, ("batch", "act_seq", "act_embed"))

    def hidden_states(self, tokens_BxS, positions_BxS=None, segment_ids_BxS=None):
        """Final normed hidden states [B, S, D] in the compute dtype (the loss can chunk the head over these)."""
        cfg = self.config
        if positions_BxS is None:
            positions_BxS = jnp.broadcast_to(jnp.arange(tokens_BxS.shape[1], dtype=jnp.int32), tokens_BxS.shape)
        cos, sin = rope_cos_sin(positions_BxS, cfg.head_size, cfg.rope_theta)
        h = self.embed(tokens_BxS)
        h = self.layers(cfg, h, cos, sin, segment_ids_BxS)
        return rms_norm(h, self.norm.weight[...], cfg.rms_norm_eps)

    def head_kernel(self):
        """[D, V] output projection (the embedding transposed when tied)."""
        if self.config.tie_word_embeddings:
            return self.embed_tokens[...].T
        return self.lm_head.kernel[...]

    def logits_from_hidden(self, h_BxSxD):
        dtype = self.config.jnp_compute_dtype
        logits = head_logits(h_BxSxD.astype(dtype), self.head_kernel().astype(dtype))
        return constrain(logits, ("batch", "act_seq", "act_vocab"))

    def __call__(self, tokens_BxS, positions_BxS=None, segment_ids_BxS=None):
        return self.logits_from_hidden(self.hidden_states(tokens_BxS, positions_BxS, segment_ids_BxS))


def param_count(cfg: LlamaConfig) -> int:
    """Parameters counted from the real module's abstract shapes (no memory allocated)."""
    abstract = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
