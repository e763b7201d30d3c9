"""Validation negative log-likelihood of held-out raw documents, per token and per character (spec 7.3).

Each document is encoded as BOS + text, cut to `max_tokens` (the original keeps max_tokens - 3 text tokens), and
scored teacher-forced; every token after BOS counts. The ELBO (`validation_elbo`) runs through the E-step code
with uniform chunks, the whole preceding text as prefix, K samples and no resampling.

Per token, as the original (spec 7.3): each document's total over its own tokens (for the ELBO, the document's
suffix tokens minus those the joint cut off), then the mean over documents, with the standard error over
documents (`per_document_mean`). NLL and ELBO use the same convention, so they compare on the same footing.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np


def per_document_mean(totals: dict[Any, float], tokens: dict[Any, float]) -> tuple[float, float]:
    """Mean over documents of total / tokens, and its standard error over documents (nan with fewer than 2);
    documents without tokens are left out."""
    ratios = np.array([totals[d] / tokens[d] for d in totals if tokens.get(d, 0) > 0], float)
    if not len(ratios):
        return float("nan"), float("nan")
    se = float(ratios.std(ddof=1) / np.sqrt(len(ratios))) if len(ratios) > 1 else float("nan")
    return float(ratios.mean()), se


def per_document_chunks(rows, key: str) -> tuple[dict[int, float], dict[int, float]]:
    """E-step result rows (one per chunk) -> per document: the sum of `key` and the suffix tokens scored."""
    totals: dict[int, float] = {}
    tokens: dict[int, float] = {}
    for r in rows:
        d = r["doc_index"]
        totals[d] = totals.get(d, 0.0) + r[key]
        tokens[d] = tokens.get(d, 0.0) + r["suffix_tokens"] - r["num_suffix_token_truncated"]
    return totals, tokens


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
    nll = {i: -float(np.sum(lp[1:])) for i, lp in enumerate(lps)}
    tokens = {i: len(s) - 1 for i, s in enumerate(seqs)}
    per_token, se = per_document_mean(nll, tokens)
    per_char, _ = per_document_mean(nll, dict(enumerate(chars)))
    return {"documents": n, "nll_per_token": per_token, "nll_per_token_se": se, "tokens": int(sum(tokens.values())),
            "nll_per_char": per_char, "avg_tokens": float(np.mean(list(tokens.values()))) if n else 0.0}


def validation_elbo(config, model_dir: str, corpus_path: str, *, k: int = 4, docs: int = 1000,
                    store_dir: str = "", name: str = "elbo") -> dict[str, Any]:
    """ELBO_n per token for n in {1, 2, 4, 8} up to k (spec 7.3) of the checkpoint at `model_dir`, through
    bolt_jax.estep."""
    from bolt_jax.estep.run import run_estep
    from bolt_jax.model.artifact import read_config
    c = elbo_config(config, model_dir, corpus_path, k=k, docs=docs, store_dir=store_dir, name=name,
                    max_pos=read_config(model_dir).max_position_embeddings)
    return elbo_of_store(c, run_estep(c))


def elbo_config(config, model_dir: str, corpus_path: str, *, k: int, docs: int, store_dir: str, name: str,
                max_pos: int):
    """The E-step settings of the validation ELBO: uniform chunks, the whole preceding text as prefix, K samples,
    no resampling, lengths within the model's positions. A config without an E-step section (an eval or a
    training config) gets the E-step's defaults."""
    import os

    from bolt_jax.config import derive
    from bolt_jax.estep.run import default_estep_config
    e = config.estep if "estep" in config else default_estep_config()
    settings = {
        "checkpoint": model_dir, "corpus_path": corpus_path, "run_name": name, "output_path": "", "num_samples": k,
        "resample": False, "random_chunking": False, "include_all_prefix": True, "slice": "0:1", "limit_docs": docs,
        "elbo_samples": [n for n in (1, 2, 4, 8) if n <= k],
        "store_dir": store_dir or os.path.join(config.run_dir, "elbo_store"),
        "max_tokens": min(e.max_tokens, max_pos), "max_new_tokens": min(e.max_new_tokens, max_pos // 2),
        "max_prompt_len": min(e.max_prompt_len, max_pos // 2)}
    if "estep" in config:
        return derive(config, {f"estep.{key}": v for key, v in settings.items()})
    section = default_estep_config()
    section.update(settings)
    return ml_collections.ConfigDict({**config.to_dict(), "estep": section.to_dict()})


def elbo_of_store(c, result: dict[str, Any]) -> dict[str, Any]:
    """ELBO_n per token from an E-step's result store: per document, the summed chunk bounds over the suffix tokens
    scored; the mean over documents (`per_document_mean`)."""
    import json
    import os

    from bolt_jax.estep.store import ResultStore
    rows = list(ResultStore(c.estep.store_dir, run=c.estep.run_name, iteration=c.estep.iteration,
                            settings=json.load(open(os.path.join(result["store"], "settings.json")))).rows())
    out: dict[str, Any] = {"chunks": len(rows)}
    for n in c.estep.elbo_samples:
        out[f"elbo_{n}_per_token"], out[f"elbo_{n}_per_token_se"] = per_document_mean(
            *per_document_chunks(rows, f"elbo_{n}"))
    return out
