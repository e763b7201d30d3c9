"""`run_synth(config)`: thoughts (or WRAP paraphrases) for a corpus from an API model, as an augmented dataset.

    python -m bolt_jax.main --config configs/synth_gpt4o_mini.py --config.synth.corpus_path=... --config.synth.max_usd=5

Before anything is sent, the number of requests, estimated tokens and dollars are printed; `estimate_only=True`
stops there. Failed or empty outputs are retried, then excluded with their document and counted (never written as
empty thoughts); outputs cut by `finish_reason=length` are flagged in the chunk (`truncated: true`) and counted.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from bolt_jax.data.chunking import ChunkingConfig, chunk_text
from bolt_jax.data.formats import raw_text
from bolt_jax.data.schema import augment_record, write_jsonl
from bolt_jax.runtime.atomic import atomic_write_text
from bolt_jax.synth import prompts
from bolt_jax.synth.api import (
    Budget,
    BudgetExceeded,
    Ledger,
    Prices,
    Request,
    RequestCache,
    estimate_tokens,
    make_client,
    run_batch,
    run_sync,
)


def default_synth_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "method": "latent_thoughts",  # latent_thoughts | wrap_baseline | wrap_cot
        "corpus_path": "",
        "output_path": "",  # augmented JSONL; statistics go to <name>.stats.json
        "work_dir": "",  # request cache and batch ledger ("" = <output>.synth_cache)
        "model": "gpt-4o-mini-2024-07-18",
        "temperature": 0.7,
        "max_tokens": 0,  # 0 = the original's per method: 6000 / 5000 / 8000
        "repeats": 1,  # paraphrases per document (the original: 5 for wrap_baseline, 4 for wrap_cot)
        "seed": 42,  # WRAP style choice: default_rng(seed + document index)
        # WRAP output order: repeat blocks, each block after the first in a shuffled document order (the original's
        # reshuffle_repeats with shuffle_seed 42), so one document's paraphrases are far apart in the stream
        "reshuffle_repeats": True,
        "shuffle_seed": 42,
        "template_file": "",  # your own prompt template (see bolt_jax.synth.prompts)
        "mode": "batch",  # batch (half price, 24 h window) | sync
        "base_url": "",  # any OpenAI-compatible server; "" = api.openai.com
        "env_file": ".env",  # where OPENAI_API_KEY may live (the environment wins)
        "timeout_s": 600.0,
        "max_usd": 1.0,  # hard cap: nothing is sent that would take the estimated + spent cost over it
        "budget_worst_case": False,  # estimate outputs at max_tokens instead of expected_output_tokens
        "expected_output_tokens": 800,
        "price_input_per_m": 0.0,  # USD per 1M tokens; 0 = the built-in table (bolt_jax.synth.api.PRICES_PER_M)
        "price_output_per_m": 0.0,
        "estimate_only": False,
        "limit_docs": 0,
        # sync mode
        "concurrency": 8,
        "max_retries": 6,
        "backoff_base_s": 1.0,
        "backoff_max_s": 60.0,
        # batch mode
        "max_requests_per_batch": 50000,  # the Batch API's limits: 50,000 requests and 200 MB per file
        "max_batch_bytes": 190 * 1024 * 1024,
        "max_attempts": 3,  # submissions per request before it is excluded
        "poll_interval_s": 30.0,
        "poll_max_s": 600.0,
        # chunking for latent_thoughts (spec 2.5, API row: prefix = previous 1 chunk)
        "units_per_chunk": 8,
        "num_prefix_chunks": 1,
        "chunk_seed": 42,
    })


DEFAULT_MAX_TOKENS = {"latent_thoughts": 6000, "wrap_baseline": 5000, "wrap_cot": 8000}
MODES = ("batch", "sync")

# config.synth numbers: key -> (lowest allowed value, whether the lowest itself is allowed, a sensible value)
_NUMBERS = {"max_usd": (0.0, True, 1.0), "temperature": (0.0, True, 0.7), "max_tokens": (0, True, 0),
            "repeats": (1, True, 1), "timeout_s": (0.0, False, 600.0), "expected_output_tokens": (0, False, 800),
            "price_input_per_m": (0.0, True, 0.0), "price_output_per_m": (0.0, True, 0.0), "limit_docs": (0, True, 0),
            "concurrency": (1, True, 8), "max_retries": (0, True, 6), "backoff_base_s": (0.0, True, 1.0),
            "backoff_max_s": (0.0, True, 60.0), "max_requests_per_batch": (1, True, 50000),
            "max_batch_bytes": (1, True, 190 * 1024 * 1024), "max_attempts": (1, True, 3),
            "poll_interval_s": (0.0, False, 30.0), "poll_max_s": (0.0, False, 600.0), "units_per_chunk": (2, True, 8),
            "num_prefix_chunks": (0, True, 1)}


def validate_synth_config(config: ml_collections.ConfigDict) -> None:
    """config.synth's enumerations and numbers (ValueError naming the key, the value and the fix), before anything
    is read or sent: a misspelt `mode` or `method`, a nan or negative `max_usd`, ... corpus_path and output_path
    (set, and the corpus there) are checked by `bolt_jax.workflows.inputs`."""
    import math
    s = config.synth
    if s.method not in prompts.METHODS:
        raise ValueError(f"config.synth.method={s.method!r} is not one of {list(prompts.METHODS)}; "
                         f"set e.g. --config.synth.method=latent_thoughts")
    if s.mode not in MODES:
        raise ValueError(f"config.synth.mode={s.mode!r} is not one of {list(MODES)}; set --config.synth.mode=batch "
                         f"(half price, 24 h window) or --config.synth.mode=sync")
    for key, (low, inclusive, example) in _NUMBERS.items():
        value = s[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not (ok and (value >= low if inclusive else value > low)):
            raise ValueError(f"config.synth.{key}={value!r} must be a finite number {'>=' if inclusive else '>'} "
                             f"{low}; set e.g. --config.synth.{key}={example}")
    Prices(s.model, s)  # an unknown model without prices fails here (SynthError), not after reading the corpus


def build_requests(records, s: ml_collections.ConfigDict) -> tuple[list[Request], dict[str, Any]]:
    """Requests and how to put their answers back: {custom_id: (doc index, chunk index or repeat, suffix)}."""
    if s.method not in prompts.METHODS:
        raise ValueError(f"config.synth.method={s.method!r}; choose one of {prompts.METHODS}")
    max_tokens = s.max_tokens or DEFAULT_MAX_TOKENS[s.method]
    params = {"model": s.model, "max_tokens": int(max_tokens), "temperature": float(s.temperature)}
    n = len(records) if not s.limit_docs else min(s.limit_docs, len(records))
    requests, where = [], {}
    chunking = ChunkingConfig(units_per_chunk=s.units_per_chunk, num_prefix_chunks=s.num_prefix_chunks,
                              chunk_seed=s.chunk_seed)
    for d in range(n):
        text = raw_text(records[d])
        if s.method == "latent_thoughts":
            for pair in chunk_text(text, chunking):
                cid = f"doc{d}-chunk{pair.index}"
                messages = prompts.latent_messages(pair.prefix, pair.suffix, s.template_file)
                requests.append(Request(cid, {**params, "messages": messages}))
                where[cid] = (d, pair.index, pair.suffix)
        else:
            for rep in range(s.repeats):
                cid = f"doc{d}-rep{rep}"
                global_index = rep * n + d
                messages = prompts.wrap_messages(text, s.method, seed=s.seed, document_index=global_index,
                                                 template_file=s.template_file)
                requests.append(Request(cid, {**params, "messages": messages}))
                where[cid] = (d, rep, text)
    return requests, where


def estimate(requests, s: ml_collections.ConfigDict, prices: Prices) -> dict[str, float]:
    tokens_in = sum(estimate_tokens(r.body["messages"]) for r in requests)
    out_each = (lambda r: r.body["max_tokens"]) if s.budget_worst_case else \
        (lambda r: min(r.body["max_tokens"], s.expected_output_tokens))
    tokens_out = sum(out_each(r) for r in requests)
    return {"requests": len(requests), "tokens_in": tokens_in, "tokens_out": tokens_out,
            "usd": prices.cost(tokens_in, tokens_out, batch=s.mode == "batch")}


def run_synth(config: ml_collections.ConfigDict, client=None, sleep=None) -> dict[str, Any]:
    import time

    from bolt_jax.data.readers import open_corpus
    s = config.synth
    if not s.corpus_path or not s.output_path:
        raise ValueError("config.synth.corpus_path and config.synth.output_path are required")
    records = open_corpus(s.corpus_path)
    requests, where = build_requests(records, s)
    prices = Prices(s.model, s)
    est = estimate(requests, s, prices)
    print(f"synth {s.method} with {s.model} ({s.mode}): {est['requests']:,} requests, ~{est['tokens_in']:,} tokens "
          f"in, ~{est['tokens_out']:,} out (estimated), ~${est['usd']:.2f}; cap synth.max_usd=${s.max_usd:.2f}")
    if s.estimate_only:
        return {"estimate": est}
    work = s.work_dir or os.path.splitext(s.output_path)[0] + ".synth_cache"
    cache = RequestCache(os.path.join(work, "requests"))
    budget = Budget(s.max_usd)
    budget.spent = sum(hit.cost_usd for r in requests if (hit := cache.get(r)) is not None and hit.ok)
    client = client if client is not None else make_client(s)
    sleep = sleep or time.sleep
    try:
        if s.mode == "sync":
            results = run_sync(requests, client, cache, budget, prices, s, sleep)
        elif s.mode == "batch":
            results = run_batch(requests, client, cache, budget, prices, s,
                                Ledger(os.path.join(work, "ledger.jsonl")), sleep)
        else:
            raise ValueError(f"config.synth.mode={s.mode!r}; choose batch or sync")
    except BudgetExceeded as e:
        raise budget_stop(requests, cache, budget, s, work, str(e), est["usd"]) from None
    return assemble(records, requests, where, results, s, budget)


def partial_stats(requests, cache: RequestCache, budget: Budget) -> dict[str, Any]:
    """What a run stopped by the budget has: the requests with a good cached result (a rerun reuses them), their
    tokens and cost, and the budget's spent and in-flight dollars."""
    stats = {"requests": len(requests), "done": 0, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0,
             "spent_usd": budget.spent, "in_flight_usd": budget.reserved, "max_usd": budget.max_usd}
    for r in requests:
        hit = cache.get(r)
        if hit is not None and hit.ok:
            stats["done"] += 1
            stats["tokens_in"] += hit.prompt_tokens
            stats["tokens_out"] += hit.completion_tokens
            stats["cost_usd"] += hit.cost_usd
    return stats


def budget_stop(requests, cache: RequestCache, budget: Budget, s, work: str, reason: str,
                estimate_usd: float) -> BudgetExceeded:
    """Prints the partial statistics of a run stopped at `synth.max_usd` (stdout; nothing is written to
    `output_path`) and returns the two-line error to raise: what happened, and how to continue."""
    st = partial_stats(requests, cache, budget)
    print(f"synth stopped at the budget: {st['done']:,} of {st['requests']:,} requests done "
          f"(${st['cost_usd']:.4f}, {st['tokens_in']:,} tokens in, {st['tokens_out']:,} out); ${st['spent_usd']:.4f} "
          f"spent, ${st['in_flight_usd']:.4f} in flight; finished results are cached in {work}; nothing written to "
          f"{s.output_path}")
    cap = max(estimate_usd * 1.2, st["spent_usd"] + st["in_flight_usd"] + 0.01)
    return BudgetExceeded(f"config.synth.max_usd={budget.max_usd:g} stopped the run: {reason}\n"
                          f"raise it (the whole run is estimated at ${estimate_usd:.4f}; e.g. "
                          f"--config.synth.max_usd={cap:.2f}) and rerun: finished requests come from the cache, unpaid")


def wrap_records(records, kept: dict[int, list], s: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """WRAP paraphrases in the original's order (spec 3.4 merge): repeat block by repeat block (every document's
    paraphrase 0, then every document's paraphrase 1, ...), the documents of every block after the first in a
    shuffled order (`default_rng(shuffle_seed)`, one permutation per block; the original shuffles its workloads, a
    few thousand documents each, the same way), so the paraphrases of one document lie far apart in the stream
    instead of landing in one batch."""
    rng = np.random.default_rng(s.get("shuffle_seed", 42))
    out = []
    for rep in range(s.repeats):
        docs = [d for d in sorted(kept) if any(r == rep for r, *_ in kept[d])]
        if rep and s.get("reshuffle_repeats", True):
            docs = [docs[i] for i in rng.permutation(len(docs))]
        for d in docs:
            for r, text, para, t in kept[d]:
                if r == rep:
                    rec = dict(records[d])
                    rec.update(latent=para, repeat=rep, text_length=len(text), latent_length=len(para),
                               **({"truncated": True} if t else {}))
                    out.append(rec)
    return out


def assemble(records, requests, where, results, s, budget: Budget) -> dict[str, Any]:
    stats = {"requests": len(requests), "failed": 0, "truncated": 0, "tokens_in": 0, "tokens_out": 0,
             "cost_usd": 0.0, "cached": 0, "documents_excluded": 0}
    per_doc: dict[int, list] = {}
    failed_docs: set[int] = set()
    for r in requests:
        res = results.get(r.custom_id)
        d, idx, src = where[r.custom_id]
        if res is None or not res.ok:
            stats["failed"] += 1
            failed_docs.add(d)
            continue
        stats["tokens_in"] += res.prompt_tokens
        stats["tokens_out"] += res.completion_tokens
        stats["cost_usd"] += res.cost_usd
        stats["cached"] += int(res.cached)
        truncated = res.finish_reason == "length"
        stats["truncated"] += int(truncated)
        per_doc.setdefault(d, []).append((idx, src, res.content, truncated))
    kept = {d: sorted(items) for d, items in per_doc.items() if d not in failed_docs}
    # a document with a missing thought is excluded, never written with an empty one
    if s.method == "latent_thoughts":
        out = [augment_record(records[d], [{"suffix": suffix, "latent": latent, **({"truncated": True} if t else {})}
                                           for _, suffix, latent, t in kept[d]]) for d in sorted(kept)]
    else:
        out = wrap_records(records, kept, s)
    stats["documents_excluded"] = len(failed_docs)
    stats["documents_written"] = len({d for d in per_doc if d not in failed_docs})
    stats["compression_ratio"] = stats["tokens_out"] / stats["tokens_in"] if stats["tokens_in"] else 0.0
    write_jsonl(s.output_path, out)
    stats_path = os.path.splitext(s.output_path)[0] + ".stats.json"
    atomic_write_text(stats_path, json.dumps(stats, indent=2))
    print(f"synth: {stats['documents_written']} documents written, {stats['documents_excluded']} excluded "
          f"({stats['failed']} failed requests), {stats['truncated']} truncated outputs, ${stats['cost_usd']:.4f} "
          f"({stats['tokens_in']:,} tokens in, {stats['tokens_out']:,} out) -> {s.output_path}")
    return {"output_path": s.output_path, "stats_path": stats_path, **stats}
