"""Jitted batched sampler (prefill + while_loop decode over a static KV cache) and teacher-forced scorer, on the
training mesh with the training weights."""

from bolt_jax.sampling.sampler import GenerationResult
from bolt_jax.sampling.schedulers import SCHEDULERS, generate, generate_stream
from bolt_jax.sampling.scorer import score, span_sums

__all__ = ["SCHEDULERS", "GenerationResult", "generate", "generate_stream", "score", "span_sums"]
