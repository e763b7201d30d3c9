"""Hugging Face Llama directory -> bolt_jax model checkpoint (bolt_jax.model.artifact), streamed into the mesh.

Each parameter is read tensor by tensor (a layer parameter's per-layer slices stacked into one host buffer),
then placed into its NamedSharding with `jax.make_array_from_callback`, which materialises only this process's
shards; the host buffer is dropped before the next parameter. Peak host memory: the sharded model plus one
stacked parameter. Every process reads the files itself (they must be visible to all hosts).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from bolt_jax import parallel
from bolt_jax.model import artifact
from bolt_jax.model.config import DTYPES, LlamaConfig
from bolt_jax.model.hf_layout import expected_hf_shapes, param_paths
from convert import bolt_tokens
from convert.hf_weights import TensorSource, WeightsError, open_hf_weights
from convert.progress import ConvertStats, tensor_progress

_log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; recomputed by the model


class UnsupportedConfigError(ValueError):
    pass


def check_supported_config(hf: Mapping[str, Any], path: str) -> None:
    """Fails on config.json fields our Llama cannot express, naming the field."""
    def fail(field: str, why: str) -> None:
        raise UnsupportedConfigError(f"{path}: field {field}={hf.get(field)!r} {why}")

    if hf.get("model_type", "llama") not in ("llama", "mistral"):
        fail("model_type", "is not a Llama-family model; only llama (and mistral without sliding window) convert")
    for field in ("rope_scaling", "rope_parameters"):
        rope = hf.get(field) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, Mapping) else "?"
        if rope_type not in (None, "default"):
            fail(field, f"asks for rope type {rope_type!r}; only plain RoPE (rope_type 'default') is implemented")
    if hf.get("hidden_act", "silu") != "silu":
        fail("hidden_act", "is not supported; the MLP is SwiGLU with silu")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field):
            fail(field, "is not supported; the model has no bias terms")
    if hf.get("sliding_window") is not None and hf.get("model_type") == "mistral":
        fail("sliding_window", "is not supported; attention is full causal")


def check_tensors(cfg: LlamaConfig, source: TensorSource, hf_dir: str) -> None:
    """Every tensor the config needs is present with its shape; nothing else is (before any data is read)."""
    expected = expected_hf_shapes(cfg)
    present = set(source.names())
    missing = [n for n in expected if n not in present]
    if missing:
        raise WeightsError(f"{hf_dir}: tensor {missing[0]} is missing"
                           + (f" (and {len(missing) - 1} more: {missing[1:4]}...)" if len(missing) > 1 else "")
                           + "; the weights do not match config.json")
    for name, shape in expected.items():
        if source.shape(name) != shape:
            raise WeightsError(f"{hf_dir}: tensor {name} has shape {source.shape(name)}, config.json implies {shape}")
    extra = sorted(n for n in present - set(expected) if not n.endswith(IGNORED_SUFFIXES)
                   and not (cfg.tie_word_embeddings and n == "lm_head.weight"))
    if extra:
        raise WeightsError(f"{hf_dir}: tensor {extra[0]} is not part of a Llama with this config.json "
                           f"({len(extra)} unexpected tensors: {extra[:4]}); biases and other extras are unsupported")


def _has_tokenizer(hf_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(hf_dir, f)) for f in TOKENIZER_FILES)


def _prepare_tokenizer(src: str | None, add_tokens: bool, out_dir: str, where: str) -> int | None:
    """Writes the tokenizer in `src` (extended with the BoLT tokens when asked) to out_dir; returns its length, or
    None when the model has none."""
    if src is None:
        if add_tokens:
            raise ValueError(f"--add-bolt-tokens needs a tokenizer, and {where} has none of {TOKENIZER_FILES}; "
                             "pass --tokenizer DIR")
        return None
    if add_tokens:
        length, ids = bolt_tokens.add_bolt_tokens(src, out_dir)
        _log.info("BoLT tokens: %s (tokenizer length %d)", ids, length)
        return length
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(src)
    tok.save_pretrained(out_dir)
    return len(tok)


def _nested_get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _nested_set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def stream_params(source: TensorSource, cfg: LlamaConfig, out_cfg: LlamaConfig, mesh, rules=None,
                  stats: ConvertStats | None = None) -> dict[str, Any]:
    """Nested dict of jax.Arrays in our layout and `out_cfg.param_dtype`, each placed in its sharding as it is read.
    Rows beyond cfg.vocab_size (out_cfg.vocab_size is larger when BoLT tokens were added) get the spec's draw.
    A progress display counts the Hugging Face tensors read; `stats` (when given) adds each one, in the stored dtype."""
    from flax import nnx

    from bolt_jax.model.llama import Llama

    abstract_state = nnx.state(nnx.eval_shape(lambda: Llama(out_cfg, nnx.Rngs(0))), nnx.Param)
    shapes = {path: tuple(v.shape) for path, v in nnx.to_flat_state(abstract_state)}
    shardings = nnx.to_pure_dict(parallel.state_shardings(abstract_state, mesh, rules))
    dtype = np.dtype(DTYPES[out_cfg.param_dtype])
    grow = out_cfg.vocab_size - cfg.vocab_size
    grown = (cfg.vocab_size, *(bolt_tokens.grown_rows(grow, cfg.hidden_size, cfg.tie_word_embeddings)
                               if grow else (None, None)))
    params: dict[str, Any] = {}
    layout = list(param_paths(out_cfg))
    stats = stats if stats is not None else ConvertStats()
    with tensor_progress(sum(len(names) for _, names, _ in layout), "hf-to-orbax") as bar:
        for path, names, transpose in layout:
            host = np.empty(shapes[path], dtype)
            if path[0] == "layers":
                for i, name in enumerate(names):
                    tensor = source.read(name)
                    host[i] = tensor.T if transpose else tensor
                    del tensor
                    stats.add(host[i])
                    bar.update(1)
            else:
                _fill_whole(host, source.read(names[0]), path, transpose, grown)
                stats.add(host)
                bar.update(1)
            array = jax.make_array_from_callback(host.shape, _nested_get(shardings, path), lambda idx, h=host: h[idx])
            _nested_set(params, path, array)
            del host
    return params


def _fill_whole(host: np.ndarray, tensor: np.ndarray, path: tuple[str, ...], transpose: bool, grown) -> None:
    """A parameter that is one HF tensor into `host`; the embedding and output matrices get the rows drawn for the
    added tokens after the source's `grown[0]` rows (`grown`: old vocab size, embedding rows, output rows)."""
    old_v, embed_rows, out_rows = grown
    if path == ("embed_tokens",):
        host[:old_v] = tensor
        if embed_rows is not None:
            host[old_v:] = embed_rows
    elif path == ("lm_head", "kernel"):
        host[:, :old_v] = tensor.T
        if out_rows is not None:
            host[:, old_v:] = out_rows.T
    else:
        host[...] = tensor.T if transpose else tensor


def check_output(out_dir: str, overwrite: bool, dtype: str) -> str | None:
    """The finished `out_dir` when there is nothing to do (a rerun), None when a conversion should run; fails on an
    `out_dir` that is something else, or on a bad dtype, before anything is read."""
    if artifact.is_complete(out_dir) and not overwrite:
        _log.warning("%s is already a complete checkpoint; nothing to do (--overwrite to redo it)", out_dir)
        return os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not artifact.is_complete(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not a bolt_jax checkpoint; choose another --out or "
                              "pass --overwrite")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype {dtype!r}: choose float32 or bfloat16")
    return None


def convert_hf_to_orbax(hf_dir: str, out_dir: str, *, add_bolt_tokens: bool = False, dtype: str = "float32",
                        tokenizer_dir: str | None = None, mesh=None, rules=None, overwrite: bool = False,
                        stats: ConvertStats | None = None) -> str:
    """Converts; a complete `out_dir` is left as it is (a rerun is a no-op) unless `overwrite`. `stats` (when given)
    counts the tensors converted, for the command's summary line."""
    done = check_output(out_dir, overwrite, dtype)
    if done:
        return done
    config_path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{hf_dir} has no config.json; --hf-dir must be a Hugging Face model directory")
    with open(config_path) as f:
        hf_config = json.load(f)
    check_supported_config(hf_config, config_path)  # before the weights are opened: the field is the problem
    source = open_hf_weights(hf_dir)
    try:
        return convert_source(hf_config, config_path, source, out_dir,
                              tokenizer_src=tokenizer_dir or (hf_dir if _has_tokenizer(hf_dir) else None),
                              add_bolt_tokens=add_bolt_tokens, dtype=dtype, mesh=mesh, rules=rules,
                              overwrite=overwrite, provenance={"source": os.path.abspath(hf_dir)}, stats=stats)
    finally:
        source.close()


def convert_source(hf_config: Mapping[str, Any], where: str, source: TensorSource, out_dir: str, *,
                   tokenizer_src: str | None, add_bolt_tokens: bool, dtype: str, mesh, rules, overwrite: bool,
                   provenance: Mapping[str, Any], stats: ConvertStats | None = None) -> str:
    """A HF Llama config dict and its tensors (a HF directory's files, or a GGUF model transformers dequantized)
    -> the checkpoint at `out_dir`: the config and every tensor checked, the tokenizer written (with the BoLT tokens
    when asked, the vocabulary grown for them), the parameters streamed into the mesh and saved. `where` names the
    config's origin in error messages; `stats` counts the tensors streamed (stream_params)."""
    check_supported_config(hf_config, where)
    try:
        cfg = LlamaConfig.from_hf_dict(dict(hf_config), param_dtype=dtype)
    except (KeyError, ValueError) as e:
        raise UnsupportedConfigError(f"{where}: {e!r} (a required field is missing or invalid)") from e
    check_tensors(cfg, source, where)
    with tempfile.TemporaryDirectory(prefix="bolt_tokenizer_") as tok_tmp:
        tok_len = _prepare_tokenizer(tokenizer_src, add_bolt_tokens, tok_tmp, where)
        out_cfg = cfg.replace(vocab_size=max(cfg.vocab_size, tok_len or 0))
        if tok_len is not None and tok_len > cfg.vocab_size:
            _log.info("growing the vocabulary %d -> %d rows", cfg.vocab_size, out_cfg.vocab_size)
        mesh = mesh if mesh is not None else parallel.make_mesh()
        params = stream_params(source, cfg, out_cfg, mesh, rules, stats)
        return artifact.save_model(
            out_dir, params, out_cfg, tokenizer_dir=tok_tmp if tok_len is not None else None,
            overwrite=overwrite, provenance={**provenance, "add_bolt_tokens": add_bolt_tokens,
                                             "source_vocab_size": cfg.vocab_size})
