"""Validation negative log-likelihood of held-out raw documents, per token and per character (spec 7.3).

Each document is encoded as BOS + text, cut to `max_tokens` (the original keeps max_tokens - 3 text tokens), and
scored teacher-forced; every token after BOS counts. (The ELBO side of spec 7.3 runs through the E-step code:
bolt_jax.bootstrap.elbo_stage.)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def validation_nll(model, tokenizer, records, *, max_tokens: int = 2048, limit: int = 1000, mesh=None
                   ) -> dict[str, Any]:
    from bolt_jax.data.formats import raw_text
    from bolt_jax.sampling import score
    n = min(limit, len(records))
    seqs, chars = [], []
    for i in range(n):
        ids = tokenizer.encode(raw_text(records[i]))[: max_tokens - 3]
        seqs.append([tokenizer.bos_id] + ids)
        chars.append(len(tokenizer.decode(ids)))
    lps = score(model, seqs, mesh=mesh)
    nll = np.array([-float(np.sum(lp[1:])) for lp in lps])
    tokens = np.array([len(s) - 1 for s in seqs])
    return {"documents": n, "nll_per_token": float(nll.sum() / max(tokens.sum(), 1)),
            "nll_per_char": float(nll.sum() / max(sum(chars), 1)), "avg_tokens": float(tokens.mean()) if n else 0.0}
