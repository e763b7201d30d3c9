"""Importance weights, resampling and the ELBO of the E-step (spec 5.3, 5.4), and their diagnostics.

For a chunk X with prefix, K thoughts z_k ~ q(z | prefix, X) are scored under the joint:
    log w_k = log p(z_k, X | prefix) - log q(z_k | prefix, X)
Normalised weights softmax(log w) give the self-normalised posterior the chosen thought is resampled from, and
ELBO_n = logsumexp(log w[:n]) - log n is the IWAE bound on log p(X | prefix) with n samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def log_weights(joint_logprob: Sequence[float], gen_logprob: Sequence[float]) -> np.ndarray:
    return np.asarray(joint_logprob, np.float64) - np.asarray(gen_logprob, np.float64)


def normalized(log_w: Sequence[float]) -> np.ndarray:
    """softmax(log w), max-subtracted (the original's formula)."""
    log_w = np.asarray(log_w, np.float64)
    if not np.all(np.isfinite(log_w)):
        raise ValueError(f"non-finite log importance weights {log_w.tolist()}")
    e = np.exp(log_w - log_w.max())
    return e / e.sum()


def chunk_rng(seed: int, doc_index: int, chunk_index: int) -> np.random.Generator:
    """The resampling RNG of one chunk. The original draws from one RNG per workload in processing order; keying
    it by (seed, document, chunk) makes the choice independent of slicing, batching and restarts."""
    return np.random.default_rng([seed, doc_index, chunk_index])


def resample(log_w: Sequence[float], rng: np.random.Generator) -> int:
    """Index of the chosen sample: a draw from softmax(log w) (importance resampling)."""
    w = normalized(log_w)
    return int(rng.choice(len(w), p=w))


def elbo(log_w: Sequence[float], n: int) -> float:
    """logsumexp(log w[:n]) - log n."""
    log_w = np.asarray(log_w, np.float64)[:n]
    if len(log_w) < n:
        raise ValueError(f"ELBO with n={n} needs {n} samples, got {len(log_w)}")
    m = log_w.max()
    return float(m + math.log(np.exp(log_w - m).sum()) - math.log(n))


def effective_sample_size(log_w: Sequence[float]) -> float:
    """1 / sum(w^2) of the normalised weights: K when all weights are equal, 1 when one sample takes all."""
    w = normalized(log_w)
    return float(1.0 / np.sum(w * w))


def chunk_diagnostics(log_w: Sequence[float]) -> dict[str, float]:
    log_w = np.asarray(log_w, np.float64)
    w = normalized(log_w)
    return {"ess": float(1.0 / np.sum(w * w)), "max_weight": float(w.max()),
            "log_weight_spread": float(log_w.max() - log_w.min())}


def true_thought_diagnostics(log_w: Sequence[float], log_w_true: float, correct: Sequence[bool],
                             rng: np.random.Generator) -> dict[str, float]:
    """What the importance weights do with one chunk's K samples when the true thought is known.

    sample_correct: share of the K samples that are correct; chosen_correct: whether the resampled one is
    (`resample(log_w, rng)`, the E-step's draw); true_top: whether the true thought, scored as a (K+1)-th candidate
    with log weight `log_w_true`, gets at least the largest weight of the K (a sample equal to it ties); ess: of the
    K samples."""
    correct = np.asarray(correct, bool)
    chosen = resample(log_w, rng)
    return {"sample_correct": float(correct.mean()), "chosen_correct": float(correct[chosen]),
            "true_top": float(log_w_true >= np.max(np.asarray(log_w, np.float64))),
            "ess": effective_sample_size(log_w)}
