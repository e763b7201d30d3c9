"""Llama architecture config: one dataclass that reads and writes Hugging Face `config.json`.

The model is HF-native (rotate-half RoPE, HF parameter names), so this config is the whole contract between our
checkpoints and Hugging Face ones. Precision and memory settings (dtypes, remat, attention kernel) are runtime
choices, not architecture, and are kept out of `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attn_out")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 22
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # Runtime settings (not written to config.json).
    param_dtype: str = "float32"
    compute_dtype: str = "bfloat16"
    remat_policy: str = "none"
    attention_impl: str = "auto"  # training and prefill attention (bolt_jax.kernels.IMPLS)
    decode_impl: str = "auto"  # the sampler's one-query decode attention (bolt_jax.kernels.DECODE_IMPLS)
    # Unrolled layers by default: on one H100 the TinyLlama step took 16% less time and 38% less memory than
    # lax.scan over stacked layers (the scan's per-step residual copies; BENCHMARKS.md). Scan compiles faster.
    scan_layers: bool = False

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_size

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_size

    @property
    def jnp_param_dtype(self):
        return DTYPES[self.param_dtype]

    @property
    def jnp_compute_dtype(self):
        return DTYPES[self.compute_dtype]

    def replace(self, **changes: Any) -> LlamaConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Fails early, naming the field and the fix."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not divisible by num_key_value_heads="
                f"{self.num_key_value_heads}: grouped-query attention needs whole groups of query heads per KV head")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                             f"{self.num_attention_heads}; set head_dim explicitly")
        if self.head_size % 2:
            raise ValueError(f"head_dim={self.head_size} must be even for rotary embeddings")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"LlamaConfig.{name}={getattr(self, name)!r}; choose one of {sorted(DTYPES)}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"LlamaConfig.remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}")
        from bolt_jax.kernels import DECODE_IMPLS, IMPLS
        if self.attention_impl not in IMPLS:
            raise ValueError(f"LlamaConfig.attention_impl={self.attention_impl!r}; choose one of {IMPLS}")
        if self.decode_impl not in DECODE_IMPLS:
            raise ValueError(f"LlamaConfig.decode_impl={self.decode_impl!r}; choose one of {DECODE_IMPLS}")

    # ------------------------------------------------------------------ counting
    def num_params(self, include_embeddings: bool = True) -> int:
        """Closed-form count (tests check it against jax.eval_shape of the real model)."""
        d, f, n = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        per_layer = d * self.q_size + 2 * d * self.kv_size + self.q_size * d + 3 * d * f + 2 * d
        total = n * per_layer + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: the one convention behind every MFU figure of this project (trainer, benches,
        BENCHMARKS.md, README).

            6 x (every parameter except the input embedding) + 6 x L x S x D

        The first term is forward + backward (2 + 4 FLOPs per weight) of every matmul a token goes through; the
        untied LM head is one (the input embedding is a lookup, not a matmul; a tied head is counted once, as the
        head). The second is causal attention: QK^T and PV are 4 S D FLOPs per token and layer dense, half of it
        causal, times 3 for forward + backward. Rows of packed documents are credited with the same plain-causal
        attention (about 8% of the total for TinyLlama at S=2048), though the kernels skip the other documents.
        TinyLlama at S=2048: 6.7607e9 with vocab 32000, 6.7608e9 with the BoLT vocab 32004 (both 6.76 GFLOP/token).
        The original's count, kept only to quote older figures, is `flops_per_token_original` (6.46 GFLOP/token)."""
        matmul_params = self.num_params(include_embeddings=False) + self.vocab_size * self.hidden_size
        return 6.0 * matmul_params + 6.0 * self.num_hidden_layers * seq_len * self.hidden_size

    def flops_per_token_original(self, seq_len: int) -> float:
        """The original's count, 6 N_nonembed + 3.5 * (4 L S D / 2) (spec 6.6; its throughput printout only): it
        leaves out the LM head. Kept to re-express figures quoted by it; MFU uses `flops_per_token`."""
        n_nonembed = self.num_params(include_embeddings=False)
        return 6.0 * n_nonembed + 3.5 * (4 * self.num_hidden_layers * seq_len * self.hidden_size / 2)

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **runtime: Any) -> LlamaConfig:
        """Reads a HF Llama config dict; `rope_theta` may sit at top level (transformers < 5) or in
        `rope_parameters`."""
        model_type = hf.get("model_type", "llama")
        if model_type not in ("llama", "mistral"):
            raise ValueError(f"config.json has model_type={model_type!r}; only Llama-family models are supported")
        rope_params = hf.get("rope_parameters") or {}
        rope_scaling = hf.get("rope_scaling") or {}
        for src in (rope_params, rope_scaling):
            rtype = src.get("rope_type", src.get("type", "default"))
            if rtype not in (None, "default"):
                raise ValueError(f"rope type {rtype!r} is not supported (only plain RoPE, as in TinyLlama)")
        rope_theta = rope_params.get("rope_theta", hf.get("rope_theta", 10000.0))
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim")
        if head_dim is not None and head_dim * num_heads == hf["hidden_size"]:
            head_dim = None  # the default: keep configs that differ only in spelling it out equal
        eos = hf.get("eos_token_id", 2)
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=float(rope_theta),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=hf.get("pad_token_id"),
            initializer_range=hf.get("initializer_range", 0.02),
            **runtime,
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers-5 style config.json (rope_theta under rope_parameters) that LlamaForCausalLM loads."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_size,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "use_cache": True,
        }

    @classmethod
    def from_hf_json(cls, path: str, **runtime: Any) -> LlamaConfig:
        path = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.exists(path):
            raise FileNotFoundError(f"no Hugging Face config at {path}")
        with open(path) as f:
            return cls.from_hf_dict(json.load(f), **runtime)

    def write_hf_json(self, directory: str) -> str:
        from bolt_jax.runtime.atomic import atomic_write_json
        path = os.path.join(directory, "config.json")
        atomic_write_json(path, self.to_hf_dict())
        return path

    def runtime_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("param_dtype", "compute_dtype", "remat_policy", "attention_impl",
                                              "decode_impl", "scan_layers")}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# TinyLlama-1.1B (TinyLlama/TinyLlama_v1.1): 1,100,048,384 parameters with vocab 32000; 32004 with the BoLT tokens.
TINYLLAMA_1_1B = LlamaConfig()

PRESETS: dict[str, LlamaConfig] = {
    "tinyllama_1.1b": TINYLLAMA_1_1B,
    "tinyllama_1.1b_bolt": TINYLLAMA_1_1B.replace(vocab_size=32004),
    # Small shapes for CPU demos and tests.
    "tiny": LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        compute_dtype="float32"),
    "small": LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024),
}


def preset(name: str, **overrides: Any) -> LlamaConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
