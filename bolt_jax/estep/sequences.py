"""Token layouts of the E-step: the posterior prompt (spec 5.2) and the joint sequences it scores (spec 5.3).

Posterior prompt: BOS + `[prefix <SoL><EoL>] suffix <SoL><POSTERIOR>`, left-truncated to `max_prompt_len`
(keeping the last tokens, as vLLM's truncate_prompt_tokens). The thought is sampled after it, up to <EoL>.

Joint: BOS + `prefix <SoL><PRIOR> z <EoL> suffix`. When the longest of the K joints exceeds `max_tokens`, the same cut
is applied to all K: first from the left of the prefix (possibly removing BOS), then from the right of the suffix.
The scored span starts after the prefix: with the original's accounting it also skips the <SoL> token (spec
11.2); the corrected accounting includes it, so the joint covers every token the prior format generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bolt_jax.data.formats import joint_text, posterior_prompt

ACCOUNTINGS = ("original", "corrected")


@dataclass
class PromptTokens:
    tokens: list[int]
    truncated: int  # prompt tokens removed from the left


def posterior_prompt_tokens(tokenizer, prefix: str, suffix: str, max_prompt_len: int) -> PromptTokens:
    ids = [tokenizer.bos_id] + tokenizer.encode(posterior_prompt(prefix, suffix))
    cut = max(0, len(ids) - max_prompt_len)
    return PromptTokens(ids[cut:], cut)


@dataclass
class JointBatch:
    """The K joint sequences of one chunk after truncation, and where each one's scored span starts."""
    sequences: list[list[int]]
    score_from: int  # index of the first token whose log-prob is summed (same for all K)
    prefix_len: int  # tokens of BOS + prefix left after truncation
    prefix_truncated: int
    suffix_truncated: int = 0  # num_suffix_token_truncated
    lengths: list[int] = field(default_factory=list)


def joint_sequences(tokenizer, prefix: str, latents: list[str], suffix: str, max_tokens: int,
                    accounting: str = "original") -> JointBatch:
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"accounting={accounting!r}; choose one of {ACCOUNTINGS}")
    context, _ = joint_text(prefix, "", suffix)
    context_ids = [tokenizer.bos_id] + tokenizer.encode(context)
    sequences = []
    for z in latents:
        ctx, scored = joint_text(prefix, z, suffix)
        sequences.append(context_ids + tokenizer.encode(scored))
    prefix_len = len(context_ids)
    longest = max(len(s) for s in sequences)
    excess = max(0, longest - max_tokens)
    left = min(prefix_len, excess)
    right = excess - left
    if excess:
        sequences = [s[left:len(s) - right] if right else s[left:] for s in sequences]
    prefix_len -= left
    score_from = prefix_len + (1 if accounting == "original" else 0)
    return JointBatch(sequences=sequences, score_from=score_from, prefix_len=prefix_len, prefix_truncated=left,
                      suffix_truncated=right, lengths=[len(s) for s in sequences])


def span_sum(token_logprobs: np.ndarray, score_from: int) -> float:
    """Sum of log p(token_j | tokens_<j) for j >= score_from. `token_logprobs[j]` is that of token j (j >= 1)."""
    return float(np.sum(np.asarray(token_logprobs, np.float64)[max(score_from, 1):]))
