"""Teacher-forced scoring: per-token log-probs of token sequences, several packed per row with segment ids.

    lps = score(model, sequences)                  # lps[i][j] = log p(seq_i[j] | seq_i[:j]) for j >= 1; lps[i][0] = 0
    sums = span_sums(lps, starts)                   # sum over j >= start_i (e.g. the suffix after a prefix)

Sequences are packed first-fit into rows of a bucketed length (documents never attend to each other), and the
log-softmax runs over chunks of positions (bolt_jax.model.head_loss), so the fp32 logits of a whole batch never
sit in memory at once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bolt_jax import parallel
from bolt_jax.model.head_loss import model_token_nll
from bolt_jax.model.llama import pure_dict
from bolt_jax.sampling.sampler import _bucket, _null, _place, _to_host


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_size"))
def _score_core(graphdef, params, tokens_BxS, positions_BxS, segment_ids_BxS, *, chunk_size: int):
    model = nnx.merge(graphdef, params)
    h = model.hidden_states(tokens_BxS, positions_BxS, segment_ids_BxS)
    targets = jnp.concatenate([tokens_BxS[:, 1:], jnp.zeros_like(tokens_BxS[:, :1])], axis=1)
    return -model_token_nll(model, h, targets, chunk_size)  # [B, S]: log p(token s+1 | <= s)


def pack_first_fit(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Indices of sequences per row (first fit, in order of decreasing length)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, space in enumerate(free):
            if lengths[i] <= space:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(row_len - lengths[i])
    return rows


def score(model, sequences: Sequence[Sequence[int]], *, mesh=None, row_len: int | None = None,
          chunk_size: int = 512, batch_bucket: int = 8, max_rows_per_call: int = 64) -> list[np.ndarray]:
    """Per-token log-probs of each sequence (entry 0 is 0: the first token has no context here)."""
    if not sequences:
        return []
    longest = max(len(s) for s in sequences)
    if longest > model.config.max_position_embeddings:
        raise ValueError(f"a sequence of {longest} tokens exceeds max_position_embeddings="
                         f"{model.config.max_position_embeddings}")
    row_len = row_len or _bucket(longest)
    if longest > row_len:
        raise ValueError(f"row_len={row_len} is shorter than the longest sequence ({longest})")
    rows = pack_first_fit([len(s) for s in sequences], row_len)
    divisor = parallel.batch_divisor(mesh) if mesh is not None else 1
    step = math.lcm(batch_bucket, divisor)
    graphdef, state = nnx.split(model)
    params = pure_dict(state)
    out: list[np.ndarray | None] = [None] * len(sequences)
    for start in range(0, len(rows), max_rows_per_call):
        group = rows[start:start + max_rows_per_call]
        b = math.ceil(len(group) / step) * step
        tokens = np.zeros((b, row_len), np.int32)
        positions = np.zeros((b, row_len), np.int32)
        segments = np.zeros((b, row_len), np.int32)
        where = []
        for r, members in enumerate(group):
            offset = 0
            for seg, i in enumerate(members, start=1):
                n = len(sequences[i])
                tokens[r, offset:offset + n] = sequences[i]
                positions[r, offset:offset + n] = np.arange(n)
                segments[r, offset:offset + n] = seg
                where.append((i, r, offset, n))
                offset += n
        ctx = jax.set_mesh(mesh) if mesh is not None else _null()
        with ctx:
            lp = _to_host(_score_core(graphdef, params, _place(tokens, mesh), _place(positions, mesh),
                                      _place(segments, mesh), chunk_size=min(chunk_size, row_len)))
        for i, r, offset, n in where:
            seq_lp = np.zeros(n, np.float64)
            seq_lp[1:] = lp[r, offset:offset + n - 1]
            out[i] = seq_lp
    return out  # type: ignore[return-value]


def span_sums(token_logprobs: Sequence[np.ndarray], starts: Sequence[int]) -> np.ndarray:
    """sum_{j >= start_i} lp_i[j] for each sequence: e.g. the log-likelihood of a suffix given its prefix."""
    return np.array([float(np.sum(lp[max(s, 1):])) for lp, s in zip(token_logprobs, starts)])
