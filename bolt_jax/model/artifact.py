"""The model checkpoint: what `python -m convert hf-to-orbax` writes and what the trainer, sampler and evaluation load.

A model checkpoint is one directory:

    params/               Orbax (StandardCheckpointer): the parameters as a nested dict in our layout
                          (layers stacked on a leading axis, kernels [in, out]; see bolt_jax/model/hf_layout.py)
    config.json           the architecture, as a Hugging Face config.json (LlamaConfig.to_hf_dict)
    tokenizer/            the tokenizer files (save_pretrained), if the model came with a tokenizer
    bolt_checkpoint.json  format version and provenance; written last

The whole directory is built under `<dir>.partial` and renamed into place at the end, so an interrupted save
leaves no directory at `<dir>` at all, and `<dir>` with `bolt_checkpoint.json` is always complete.

`load_model` restores every parameter directly into its sharding on the mesh (from the rules table), so the
whole model never sits on one device or host.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from bolt_jax.model.config import DTYPES, LlamaConfig
from bolt_jax.runtime.atomic import PARTIAL_SUFFIX, atomic_directory, atomic_write_json

FORMAT = "bolt_jax.model_checkpoint/1"
MARKER = "bolt_checkpoint.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
SAVE_CONCURRENT_GB = 0.5


class CheckpointError(ValueError):
    pass


# ------------------------------------------------------------------------------------------------ atomic directories
def is_complete(ckpt_dir: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(str(ckpt_dir), MARKER))


# ------------------------------------------------------------------------------------------------ save
def params_dtype_name(params: Mapping[str, Any]) -> str:
    dtypes = {np.dtype(x.dtype) for x in jax.tree.leaves(params)}
    names = [name for name, dt in DTYPES.items() if np.dtype(dt) in dtypes]
    if len(dtypes) != 1 or not names:
        raise CheckpointError(f"parameters must share one dtype of {sorted(DTYPES)}, got {sorted(map(str, dtypes))}")
    return names[0]


def save_model(ckpt_dir: str | os.PathLike, params: Mapping[str, Any], config: LlamaConfig, *,
               tokenizer_dir: str | os.PathLike | None = None, overwrite: bool = False,
               provenance: Mapping[str, Any] | None = None) -> str:
    """Writes a model checkpoint atomically. `params` is the nested dict of (sharded) arrays in our layout, as
    `bolt_jax.model.llama.pure_dict(nnx.state(model, nnx.Param))` gives; every process must call this."""
    import orbax.checkpoint as ocp

    _check_param_shapes(params, config)
    dtype = params_dtype_name(params)
    with atomic_directory(ckpt_dir, overwrite=overwrite) as staging:
        # Synchronous, with bounded device->host and write concurrency: the save then needs about one more GiB of
        # host memory, not a second copy of the model (the defaults let a CPU save double the peak).
        largest = max(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
        limit_gb = max(SAVE_CONCURRENT_GB, largest * 1.01 / 10**9)  # at least the largest array, or Orbax refuses
        limits = {"save_concurrent_gb": limit_gb, "save_device_host_concurrent_gb": limit_gb}
        accepted = inspect.signature(ocp.PyTreeCheckpointHandler.__init__).parameters  # older Orbax lacks some
        handler = ocp.PyTreeCheckpointHandler(**{k: v for k, v in limits.items() if k in accepted})
        with ocp.Checkpointer(handler) as checkpointer:
            checkpointer.save(os.path.join(staging, PARAMS_DIR), args=ocp.args.PyTreeSave(params))
        if jax.process_index() == 0:
            config.write_hf_json(staging)
            if tokenizer_dir is not None:
                shutil.copytree(str(tokenizer_dir), os.path.join(staging, TOKENIZER_DIR),
                                ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "config.json",
                                                              "generation_config.json", "*.index.json", ".*"))
            atomic_write_json(os.path.join(staging, MARKER), {
                "format": FORMAT, "param_dtype": dtype, "runtime": config.runtime_dict(),
                "provenance": dict(provenance or {}), "id": uuid.uuid4().hex})
    return os.path.abspath(str(ckpt_dir))


def model_identity(ckpt_dir: str | os.PathLike) -> str:
    """What names one saved model, for caches keyed by the model (the E-step's result store): its path and the id
    written when it was saved, so another model saved later at the same path is another model. Checkpoints written
    before ids existed are named by their path and the time their marker was written."""
    path = os.path.abspath(str(ckpt_dir))
    marker = os.path.join(path, MARKER)
    try:
        with open(marker) as f:
            saved = json.load(f).get("id")
        return f"{path}@{saved or os.stat(marker).st_mtime_ns}"
    except (OSError, ValueError):
        return path


def read_provenance(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """What a complete checkpoint was made from (the `provenance` save_model was given; {} when none)."""
    with open(os.path.join(str(ckpt_dir), MARKER)) as f:
        return dict(json.load(f).get("provenance") or {})


def _check_param_shapes(params: Mapping[str, Any], config: LlamaConfig) -> None:
    expected = expected_param_shapes(config)
    flat = _flatten(params)
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    if missing or extra:
        raise CheckpointError(f"parameters do not match the config: missing {missing}, unexpected {extra}")
    for key, shape in expected.items():
        if tuple(flat[key].shape) != shape:
            raise CheckpointError(f"parameter {key} has shape {tuple(flat[key].shape)}, the config expects {shape}")


# ------------------------------------------------------------------------------------------------ load
def read_config(ckpt_dir: str | os.PathLike, **runtime: Any) -> LlamaConfig:
    """The checkpoint's LlamaConfig. Runtime fields (param_dtype, compute_dtype, ...) default to those saved with
    it; `runtime` overrides them."""
    ckpt_dir = str(ckpt_dir)
    if not os.path.isdir(ckpt_dir):
        partial = os.path.abspath(ckpt_dir) + PARTIAL_SUFFIX
        hint = (f" ({partial} exists: an interrupted save; rerun it)" if os.path.isdir(partial) else "")
        raise CheckpointError(f"no model checkpoint at {ckpt_dir}{hint}")
    if not is_complete(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir} is not a complete bolt_jax model checkpoint (no {MARKER}); "
                              "write one with `python -m convert hf-to-orbax` or bolt_jax.model.artifact.save_model")
    with open(os.path.join(ckpt_dir, MARKER)) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt_dir}: checkpoint format {meta.get('format')!r}, this code reads {FORMAT!r}")
    stored = {k: v for k, v in (meta.get("runtime") or {}).items() if k in LlamaConfig().runtime_dict()}
    runtime = {**stored, "param_dtype": meta.get("param_dtype", "float32"), **runtime}
    config = LlamaConfig.from_hf_json(ckpt_dir, **runtime)
    if config.head_dim is not None and config.head_dim * config.num_attention_heads == config.hidden_size:
        # config.json always spells head_dim out; the default is None (= hidden / heads). Normalised, a loaded
        # config equals the preset it was made from (the trainer compares them field by field).
        config = config.replace(head_dim=None)
    return config


def tokenizer_path(ckpt_dir: str | os.PathLike) -> str | None:
    path = os.path.join(str(ckpt_dir), TOKENIZER_DIR)
    return path if os.path.isdir(path) else None


def expected_param_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """{'layers/self_attn/q_proj/kernel': shape, ...} of the model `config` describes (no memory allocated)."""
    from flax import nnx

    from bolt_jax.model.llama import Llama

    abstract = nnx.eval_shape(lambda: Llama(config, nnx.Rngs(0)))
    return {"/".join(map(str, path)): tuple(var.shape)
            for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


def load_model(ckpt_dir: str | os.PathLike, mesh=None, *, dtype: str | None = None, rules=None,
               **runtime: Any):
    """(model, config, tokenizer_dir or None). Each parameter is restored straight into its NamedSharding on `mesh`
    (default: all devices on the fsdp axis), cast to `dtype` (default: the stored dtype; "compute": the compute dtype,
    for sampling and scoring: the model casts every weight to the compute dtype where it uses it, so the results are
    bit-identical, while a decode step reads half the weight bytes of an fp32 training checkpoint). `runtime` sets
    other LlamaConfig runtime fields (compute_dtype, remat_policy, attention_impl, scan_layers)."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from bolt_jax import parallel
    from bolt_jax.model.llama import Llama

    if dtype == "compute":
        dtype = read_config(ckpt_dir, **runtime).compute_dtype
    if dtype is not None:
        if dtype not in DTYPES:
            raise CheckpointError(f"dtype={dtype!r}; choose one of {sorted(DTYPES)}")
        runtime["param_dtype"] = dtype
    config = read_config(ckpt_dir, **runtime)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    abstract = nnx.eval_shape(lambda: Llama(config, nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = parallel.state_shardings(abstract_state, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nnx.to_pure_dict(abstract_state), nnx.to_pure_dict(shardings))
    params_dir = os.path.join(os.path.abspath(str(ckpt_dir)), PARAMS_DIR)
    checkpointer = ocp.StandardCheckpointer()
    _check_stored_shapes(checkpointer, params_dir, target)
    restored = checkpointer.restore(params_dir, target)
    checkpointer.close()
    nnx.replace_by_pure_dict(abstract_state, restored)
    return nnx.merge(graphdef, abstract_state), config, tokenizer_path(ckpt_dir)


def _check_stored_shapes(checkpointer, params_dir: str, target: Mapping[str, Any]) -> None:
    """Names the parameter when the stored tree does not match the config (Orbax's own message does not)."""
    stored_tree = checkpointer.metadata(params_dir).item_metadata.tree
    stored = {k: tuple(v.shape) for k, v in _flatten(stored_tree).items()}
    wanted = {k: tuple(v.shape) for k, v in _flatten(target).items()}
    missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
    if missing or extra:
        raise CheckpointError(f"{params_dir}: parameters missing from the checkpoint {missing}, "
                              f"in the checkpoint but not in the model {extra}")
    for key, shape in wanted.items():
        if stored[key] != shape:
            raise CheckpointError(f"{params_dir}: parameter {key} is stored with shape {stored[key]}, "
                                  f"config.json expects {shape}")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out
