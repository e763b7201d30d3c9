"""The one table between Hugging Face Llama tensor names and our parameter paths.

HF stores Linear weights [out, in]; we store kernels [in, out], and decoder layers stacked along a leading axis.
So conversion is rename + transpose (+ stack/unstack over layers): nothing else, because RoPE is HF's rotate-half.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from bolt_jax.model.config import LlamaConfig

# (our path inside DecoderStack, HF name inside model.layers.{i}, transpose?)
LAYER_TENSORS: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("input_layernorm", "weight"), "input_layernorm.weight", False),
    (("self_attn", "q_proj", "kernel"), "self_attn.q_proj.weight", True),
    (("self_attn", "k_proj", "kernel"), "self_attn.k_proj.weight", True),
    (("self_attn", "v_proj", "kernel"), "self_attn.v_proj.weight", True),
    (("self_attn", "o_proj", "kernel"), "self_attn.o_proj.weight", True),
    (("post_attention_layernorm", "weight"), "post_attention_layernorm.weight", False),
    (("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", True),
    (("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", True),
    (("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", True),
)

# (our top-level path, HF name, transpose?)
TOP_TENSORS: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("embed_tokens",), "model.embed_tokens.weight", False),
    (("norm", "weight"), "model.norm.weight", False),
    (("lm_head", "kernel"), "lm_head.weight", True),
)


def param_paths(cfg: LlamaConfig) -> Iterator[tuple[tuple[str, ...], list[str], bool]]:
    """Yields (our path, the HF names that make it, transpose?). Layer params list one HF name per layer."""
    for path, name, transpose in TOP_TENSORS:
        if path[0] == "lm_head" and cfg.tie_word_embeddings:
            continue
        yield path, [name], transpose
    for path, name, transpose in LAYER_TENSORS:
        yield ("layers",) + path, [f"model.layers.{i}.{name}" for i in range(cfg.num_hidden_layers)], transpose


def expected_hf_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    per_layer = {
        "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (cfg.q_size, d), "self_attn.k_proj.weight": (cfg.kv_size, d),
        "self_attn.v_proj.weight": (cfg.kv_size, d), "self_attn.o_proj.weight": (d, cfg.q_size),
        "mlp.gate_proj.weight": (f, d), "mlp.up_proj.weight": (f, d), "mlp.down_proj.weight": (d, f),
    }
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    for i in range(cfg.num_hidden_layers):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in per_layer.items()})
    return shapes


def params_from_hf(cfg: LlamaConfig, get_tensor: Callable[[str], np.ndarray]) -> dict[str, Any]:
    """Nested dict of numpy arrays in our layout, reading HF tensors by name through `get_tensor`.

    Checks every shape against the config and names the offending tensor. (The converter streams tensors into
    their shardings instead; this in-memory form serves tests and small models.)
    """
    shapes = expected_hf_shapes(cfg)
    out: dict[str, Any] = {}
    for path, names, transpose in param_paths(cfg):
        arrays = []
        for name in names:
            arr = np.asarray(get_tensor(name))
            if tuple(arr.shape) != shapes[name]:
                raise ValueError(f"HF tensor {name} has shape {tuple(arr.shape)}, the config expects {shapes[name]}")
            arrays.append(arr.T if transpose else arr)
        value = np.stack(arrays) if path[0] == "layers" else arrays[0]
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def hf_from_params(cfg: LlamaConfig, params: Mapping[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, numpy array [out, in]) from our nested params, one tensor at a time."""
    for path, names, transpose in param_paths(cfg):
        node: Any = params
        for key in path:
            node = node[key]
        value = np.asarray(node)
        for i, name in enumerate(names):
            arr = value[i] if path[0] == "layers" else value
            yield name, (arr.T if transpose else arr)


def load_params_into(model, params: Mapping[str, Any]) -> None:
    """Copies a nested dict of arrays (our layout) into an NNX model, checking shapes."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for path, _names, _ in param_paths(model.config):
        node: Any = params
        for key in path:
            node = node[key]
        var = flat[path]
        if tuple(var.shape) != tuple(np.shape(node)):
            raise ValueError(f"parameter {'/'.join(path)} has shape {var.shape}, the weights have {np.shape(node)}")
        var[...] = jnp.asarray(node, dtype=var.dtype)
    nnx.update(model, state)
