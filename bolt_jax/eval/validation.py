"""Validation negative log-likelihood of held-out raw documents, per token and per character (spec 7.3).

Each document is encoded as BOS + text, cut to `max_tokens` (the original keeps max_tokens - 3 text tokens), and
scored teacher-forced; every token after BOS counts. The ELBO (`validation_elbo`) runs through the E-step code
with uniform chunks, the whole preceding text as prefix, K samples and no resampling; ELBO_n per token divides the
summed chunk bounds by the suffix tokens scored.
"""

from __future__ import annotations

from typing import Any

import ml_collections
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
    from bolt_jax.eval.fewshot import bootstrap_ratio_se
    return {"documents": n, "nll_per_token": float(nll.sum() / max(tokens.sum(), 1)),
            "nll_per_token_se": bootstrap_ratio_se(nll, tokens), "tokens": int(tokens.sum()),
            "nll_per_char": float(nll.sum() / max(sum(chars), 1)), "avg_tokens": float(tokens.mean()) if n else 0.0}


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
    """ELBO_n per token from an E-step's result store: summed chunk bounds over the suffix tokens scored."""
    import json
    import os

    from bolt_jax.estep.store import ResultStore
    rows = list(ResultStore(c.estep.store_dir, run=c.estep.run_name, iteration=c.estep.iteration,
                            settings=json.load(open(os.path.join(result["store"], "settings.json")))).rows())
    tokens = sum(r["suffix_tokens"] - r["num_suffix_token_truncated"] for r in rows)
    out = {f"elbo_{n}_per_token": sum(r[f"elbo_{n}"] for r in rows) / max(tokens, 1) for n in c.estep.elbo_samples}
    out["chunks"] = len(rows)
    return out
