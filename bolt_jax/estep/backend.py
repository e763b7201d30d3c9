"""The E-step's model interface (`ModelBackend`: sample K thoughts, score sequences; `Sample`) and its
implementation: the JAX sampler and scorer on the trainer's mesh, over a model checkpoint (`JaxBackend`).
Tests and the toy diagnostics drive the E-step through the same interface with stand-ins."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import ml_collections
import numpy as np

from bolt_jax import parallel
from bolt_jax.data.formats import EOL


@dataclass
class Sample:
    tokens: list[int]  # generated tokens, without the stop token
    logq: float  # sum of log q over the generated tokens, including the stop token when it was generated
    done: bool  # stopped at <EoL> or EOS (False: hit max_new_tokens)


class ModelBackend(Protocol):
    def sample(self, prompts: Sequence[Sequence[int]], *, n: int, seeds: Sequence[int]) -> list[list[Sample]]:
        """n samples per prompt; prompt i's randomness comes from seeds[i] alone."""

    def score(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per-token log p(token_j | tokens_<j) for j >= 1 (entry 0 unused)."""


class JaxBackend:
    def __init__(self, model, tokenizer, estep: ml_collections.ConfigDict, mesh=None):
        self.model, self.tokenizer, self.e, self.mesh = model, tokenizer, estep, mesh
        self.eol_id = tokenizer.special_ids[EOL]
        # spec 8.4: a thought ends at <EoL> or at EOS; either stop token is dropped from the text (so the joint
        # closes the thought with <EoL> as always) and its log q stays in the sum
        self.stop_ids = [self.eol_id, tokenizer.eos_id]

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict):
        """(backend, tokenizer, model id) for config.estep.checkpoint on the config's mesh."""

        from bolt_jax.config import make_sampling_mesh, rules_of, runtime_overrides
        from bolt_jax.data.tokenizer import load_tokenizer
        from bolt_jax.model import artifact as model_ckpt
        e = config.estep
        if not e.checkpoint:
            raise ValueError("config.estep.checkpoint is empty: name the model checkpoint that writes the thoughts")
        mesh = make_sampling_mesh(config)
        runtime = runtime_overrides(config) if "model" in config else {}
        model, _, tok_dir = model_ckpt.load_model(e.checkpoint, mesh, dtype="compute",
                                                 rules=rules_of(config), **runtime)
        tok_path = e.tokenizer_path or tok_dir
        if not tok_path:
            raise ValueError(f"checkpoint {e.checkpoint} has no tokenizer; set config.estep.tokenizer_path")
        tokenizer = load_tokenizer(tok_path)
        return cls(model, tokenizer, e, mesh), tokenizer, model_ckpt.model_identity(e.checkpoint)

    def sample(self, prompts: Sequence[Sequence[int]], *, n: int, seeds: Sequence[int]) -> list[list[Sample]]:
        from bolt_jax.sampling import generate
        scheduler = self.e.get("scheduler", "static")
        r = generate(self.model, prompts, n=n, max_new_tokens=self.e.max_new_tokens, temperature=self.e.temperature,
                     top_k=self.e.top_k, top_p=self.e.top_p, stop_token_ids=self.stop_ids,
                     max_prompt_len=self.e.max_prompt_len, prompt_seeds=seeds, mesh=self.mesh, scheduler=scheduler,
                     decode_slots=self.decode_slots(len(prompts) * n) if scheduler == "continuous" else None,
                     prefix_sharing=bool(self.e.get("prefix_sharing", False)),
                     prompt_entries=self.prompt_entries())
        self.last_stats = r.stats  # slots, decode steps, slot occupancy (bench/estep.py reads them)
        return self._samples(r, len(prompts), n)

    @staticmethod
    def _samples(r, num_prompts: int, n: int) -> list[list[Sample]]:
        return [[Sample(tokens=r.tokens[i * n + j], logq=float(r.logq[i * n + j]), done=bool(r.done[i * n + j]))
                 for j in range(n)] for i in range(num_prompts)]

    def sample_stream(self, batches: Iterable[tuple[Any, Sequence[Sequence[int]], Sequence[int]]], *,
                      n: int) -> Iterator[tuple[Any, list[list[Sample]]]]:
        """`sample` for a stream of (key, prompts, seeds) batches, yielding (key, samples) in order: one continuous
        engine for all of them (`sampling.generate_stream`), so a batch's long tail does not leave the slots idle.
        The same samples as one `sample` call per batch. `last_stats` holds the stream's statistics so far."""
        from bolt_jax.sampling import generate_stream
        requests = self.e.chunks_per_batch * n
        for key, r in generate_stream(
                self.model, batches, n=n, max_new_tokens=self.e.max_new_tokens, temperature=self.e.temperature,
                top_k=self.e.top_k, top_p=self.e.top_p, stop_token_ids=self.stop_ids,
                max_prompt_len=self.e.max_prompt_len, mesh=self.mesh, decode_slots=self.decode_slots(requests),
                prefix_sharing=bool(self.e.get("prefix_sharing", False)), prompt_entries=self.prompt_entries()):
            self.last_stats = r.stats
            yield key, self._samples(r, len(r.prompt_lengths), n)

    def decode_slots(self, requests: int) -> int:
        """`estep.decode_slots`, or by default a quarter of a batch's requests (at least 8) per batch device of the
        sampling mesh: each device decodes as many rows as one device alone would (fewer and every step would read
        the whole model for a handful of rows); with the batches streamed through one engine (`sample_stream`),
        slots beyond one batch's requests take the next batches'. A multiple of the mesh's batch devices."""
        from bolt_jax.sampling.engine import round_to_batch
        devices = parallel.batch_divisor(self.mesh) if self.mesh is not None else 1
        return round_to_batch(self.e.get("decode_slots", 0) or max(8, requests // 4) * devices, self.mesh)

    def prompt_entries(self) -> int | None:
        """`estep.prompt_entries` rounded up to a multiple of the mesh's batch devices as decode_slots is (None: the
        engine's default, 2 x slots / num_samples)."""
        from bolt_jax.sampling.engine import round_to_batch
        return round_to_batch(self.e.prompt_entries, self.mesh) if self.e.get("prompt_entries", 0) else None

    def score(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        from bolt_jax.sampling import score
        return score(self.model, sequences, mesh=self.mesh)
