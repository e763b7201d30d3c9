"""bolt_jax model checkpoint -> Hugging Face directory that `LlamaForCausalLM.from_pretrained` loads.

Writes config.json (transformers 5 format), model.safetensors (streamed: one parameter gathered to the host at
a time), generation_config.json (the original's sampling defaults: do_sample, T=0.6, top_p=0.9), the tokenizer,
and `bolt_convert.json` last. All of it is built in `<out>.partial` and renamed, so `<out>` is either complete or
absent, and a rerun on a complete `<out>` does nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from bolt_jax.model import artifact
from bolt_jax.model.config import DTYPES, LlamaConfig
from bolt_jax.model.hf_layout import expected_hf_shapes, hf_from_params
from convert.hf_weights import SINGLE_FILE, write_safetensors
from convert.progress import ConvertStats, tensor_progress

MARKER = "bolt_convert.json"
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.9}  # spec 6.5


class _HostGather:
    """A parameter that becomes a host numpy array only when asked (np.asarray), gathered across processes."""

    def __init__(self, array: jax.Array, dtype: np.dtype):
        self.array, self.dtype = array, dtype

    def __array__(self, dtype=None, copy=None):
        array, self.array = self.array, None
        if array is None:
            raise RuntimeError("a parameter was gathered twice; the export streams each one once")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            host = np.asarray(multihost_utils.process_allgather(array, tiled=True))
        else:  # from the shards: np.asarray(array) would cache a second host copy on the jax.Array
            host = np.empty(array.shape, array.dtype)
            for shard in array.addressable_shards:
                host[shard.index] = np.asarray(shard.data)
        array.delete()  # the device copy is no longer needed: memory stays near one model
        return host.astype(dtype or self.dtype, copy=False)


def hf_config_dict(cfg: LlamaConfig, dtype: str) -> dict[str, Any]:
    import transformers

    out = cfg.to_hf_dict()
    out["dtype"] = dtype
    out["transformers_version"] = transformers.__version__
    return out


def generation_config_dict(cfg: LlamaConfig) -> dict[str, Any]:
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, **GENERATION_DEFAULTS}


def convert_orbax_to_hf(ckpt_dir: str, out_dir: str, *, dtype: str | None = None, mesh=None, rules=None,
                        overwrite: bool = False, stats: ConvertStats | None = None) -> str:
    """Converts; `dtype` None keeps the checkpoint's parameter dtype. A progress display counts the tensors gathered
    and written; `stats` (when given) adds each one, for the command's summary line."""
    if os.path.isfile(os.path.join(out_dir, MARKER)) and not overwrite:
        logging.getLogger(__name__).warning("%s is already a complete export; nothing to do (--overwrite to redo)",
                                            out_dir)
        return os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not a finished export; choose another --out or --overwrite")
    if dtype is not None and dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype {dtype!r}: choose float32 or bfloat16")
    from flax import nnx

    from bolt_jax.model.llama import pure_dict

    model, cfg, tokenizer_dir = artifact.load_model(ckpt_dir, mesh, dtype=dtype, rules=rules)
    np_dtype = np.dtype(DTYPES[cfg.param_dtype])
    params = jax.tree.map(lambda a: _HostGather(a, np_dtype), pure_dict(nnx.state(model, nnx.Param)))
    del model  # _HostGather now holds the only references, and frees each parameter once written
    specs = [(name, shape, np_dtype) for name, shape in _hf_order(cfg)]
    stream = _counted(hf_from_params(cfg, params), len(specs), stats if stats is not None else ConvertStats())
    with artifact.atomic_directory(out_dir, overwrite=overwrite) as staging:
        writer = jax.process_index() == 0
        if writer:
            write_safetensors(os.path.join(staging, SINGLE_FILE), specs, stream)
            artifact.atomic_write_json(os.path.join(staging, "config.json"), hf_config_dict(cfg, cfg.param_dtype))
            artifact.atomic_write_json(os.path.join(staging, "generation_config.json"),
                                         generation_config_dict(cfg))
            if tokenizer_dir is not None:
                for name in os.listdir(tokenizer_dir):
                    shutil.copy2(os.path.join(tokenizer_dir, name), os.path.join(staging, name))
            artifact.atomic_write_json(os.path.join(staging, MARKER), {
                "source": os.path.abspath(ckpt_dir), "dtype": cfg.param_dtype,
                "tokenizer": tokenizer_dir is not None})
        else:  # the gathers are collective: every process walks the same stream
            for _ in stream:
                pass
    return os.path.abspath(out_dir)


def _counted(stream: Iterator[tuple[str, np.ndarray]], total: int,
             stats: ConvertStats) -> Iterator[tuple[str, np.ndarray]]:
    """The (name, array) stream with each tensor counted in `stats` and on a progress display as it is handed on
    (gathering a parameter to the host is what takes the time)."""
    with tensor_progress(total, "orbax-to-hf") as bar:
        for name, array in stream:
            stats.add(array)
            bar.update(1)
            yield name, array


def _hf_order(cfg: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, HF shape) in the order hf_from_params yields them."""
    from bolt_jax.model.hf_layout import param_paths

    shapes = expected_hf_shapes(cfg)
    return [(name, shapes[name]) for _, names, _ in param_paths(cfg) for name in names]

