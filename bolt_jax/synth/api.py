"""The OpenAI side of thought synthesis: client, prices and budget, request cache, retries, sync and Batch modes.

- The API key comes only from the environment (`OPENAI_API_KEY`) or a `.env` file; it is never logged, cached or
  written anywhere. `base_url` points the official client at any OpenAI-compatible server.
- Every request is keyed by (model, resolved parameters, messages); a finished request is cached on disk, so a rerun
  costs nothing and nothing is paid twice.
- The budget refuses to send a request (sync) or submit a batch whose estimated cost would take the run over
  `max_usd`; spending is then accounted from the API's own `usage` fields.
- Batch mode keeps a ledger of submitted batches: after a crash, a restart polls the batches already in flight
  instead of submitting their requests again; failed or expired requests are resubmitted, up to `max_attempts`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from bolt_jax.runtime.atomic import atomic_write_text

log = logging.getLogger("bolt_jax.synth")

# USD per 1M tokens (input, output), standard (synchronous) API, from openai.com/api/pricing as of 2025-07.
# Check before a large run; override with config.synth.price_input_per_m / price_output_per_m.
PRICES_PER_M = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-mini-2024-07-18": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half price


class BudgetExceeded(RuntimeError):
    pass


class SynthError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------ key and client
def api_key(env_file: str = ".env") -> str:
    key = os.environ.get("OPENAI_API_KEY", "")
    if not key and env_file and os.path.isfile(env_file):
        for line in open(env_file, encoding="utf-8"):
            name, _, value = line.strip().partition("=")
            if name.strip() == "OPENAI_API_KEY":
                key = value.strip().strip("'\"")
    if not key:
        raise SynthError("no OpenAI API key: set OPENAI_API_KEY in the environment or in a .env file "
                         "(config.synth.env_file)")
    return key


def make_client(cfg: Mapping[str, Any]):
    import openai
    return openai.OpenAI(api_key=api_key(cfg.get("env_file", ".env")), base_url=cfg.get("base_url") or None,
                         max_retries=0, timeout=float(cfg.get("timeout_s", 600)))


# ------------------------------------------------------------------------------------------------ requests
@dataclass(frozen=True)
class Request:
    custom_id: str
    body: dict[str, Any]  # {model, messages, max_tokens, temperature}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.body, sort_keys=True).encode()).hexdigest()


@dataclass
class Result:
    content: str | None
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cost_usd: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.content and self.content.strip())


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """About 4 characters per token for English (tiktoken is not a dependency), plus message overhead."""
    return sum(len(m["content"]) // 4 + 4 for m in messages) + 3


class Prices:
    def __init__(self, model: str, cfg: Mapping[str, Any]):
        pin, pout = cfg.get("price_input_per_m", 0.0), cfg.get("price_output_per_m", 0.0)
        if not (pin and pout):
            if model not in PRICES_PER_M:
                raise SynthError(f"no price known for model {model!r}; set config.synth.price_input_per_m and "
                                 f"price_output_per_m (USD per 1M tokens) so the budget can be enforced")
            pin, pout = PRICES_PER_M[model]
        self.input, self.output = pin / 1e6, pout / 1e6

    def cost(self, prompt_tokens: float, completion_tokens: float, batch: bool) -> float:
        c = prompt_tokens * self.input + completion_tokens * self.output
        return c * (BATCH_DISCOUNT if batch else 1.0)


class Budget:
    """Spent (from usage) + reserved (estimates of requests in flight) never exceeds max_usd."""

    def __init__(self, max_usd: float):
        self.max_usd, self.spent, self.reserved = float(max_usd), 0.0, 0.0
        self._lock = threading.Lock()

    def reserve(self, estimate: float, what: str) -> None:
        with self._lock:
            if self.spent + self.reserved + estimate > self.max_usd + 1e-12:
                raise BudgetExceeded(
                    f"refusing to send {what}: estimated ${estimate:.4f} on top of ${self.spent:.4f} spent and "
                    f"${self.reserved:.4f} in flight would exceed synth.max_usd=${self.max_usd:.2f}")
            self.reserved += estimate

    def settle(self, estimate: float, actual: float) -> None:
        with self._lock:
            self.reserved = max(0.0, self.reserved - estimate)
            self.spent += actual


# ------------------------------------------------------------------------------------------------ cache
class RequestCache:
    """One JSON file per finished request, named by the request key; atomic writes."""

    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, key[:2], f"{key}.json")

    def get(self, request: Request) -> Result | None:
        path = self._path(request.key)
        if not os.path.exists(path):
            return None
        d = json.load(open(path))
        return Result(**{**d, "cached": True})

    def put(self, request: Request, result: Result) -> None:
        d = {k: getattr(result, k) for k in ("content", "finish_reason", "prompt_tokens", "completion_tokens",
                                              "error", "cost_usd")}
        atomic_write_text(self._path(request.key), json.dumps(d))


def _result_from_body(body: Mapping[str, Any], prices: Prices, batch: bool) -> Result:
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    return Result(content=choice["message"].get("content"), finish_reason=choice.get("finish_reason"),
                  prompt_tokens=pt, completion_tokens=ct, cost_usd=prices.cost(pt, ct, batch))


# ------------------------------------------------------------------------------------------------ sync mode
def _retry_after(error) -> float | None:
    response = getattr(error, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after") or response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def call_with_retries(client, request: Request, cfg: Mapping[str, Any], sleep: Callable[[float], None] = time.sleep):
    """The chat completion body; retries 429, 5xx, timeouts and connection errors with exponential backoff and
    jitter, waiting at least Retry-After when the server sends it."""
    import openai
    retryable = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                 openai.APIConnectionError)
    attempts = int(cfg.get("max_retries", 6))
    base, cap = float(cfg.get("backoff_base_s", 1.0)), float(cfg.get("backoff_max_s", 60.0))
    for attempt in range(attempts + 1):
        try:
            response = client.chat.completions.create(**request.body)
            return response.model_dump()
        except retryable as e:
            if attempt == attempts:
                raise
            wait = min(cap, base * 2 ** attempt) * (0.5 + random.random())
            ra = _retry_after(e)
            if ra is not None:
                wait = max(wait, ra)
            log.warning("request %s: %s; retry %d/%d in %.1fs", request.custom_id, type(e).__name__, attempt + 1,
                        attempts, wait)
            sleep(wait)
        except openai.APIStatusError as e:  # 4xx other than 429: not retryable
            raise SynthError(f"request {request.custom_id} rejected: HTTP {e.status_code}") from None
    raise AssertionError("unreachable")


def run_sync(requests: Sequence[Request], client, cache: RequestCache, budget: Budget, prices: Prices,
             cfg: Mapping[str, Any], sleep: Callable[[float], None] = time.sleep) -> dict[str, Result]:
    results: dict[str, Result] = {}
    todo = []
    for r in requests:
        hit = cache.get(r)
        if hit is not None and hit.ok:
            results[r.custom_id] = hit
        else:
            todo.append(r)

    def one(r: Request) -> tuple[str, Result]:
        est = prices.cost(estimate_tokens(r.body["messages"]), _expected_output(r, cfg), batch=False)
        budget.reserve(est, f"request {r.custom_id}")
        try:
            body = call_with_retries(client, r, cfg, sleep)
        except Exception as e:  # noqa: BLE001 - recorded, counted, never an empty thought
            budget.settle(est, 0.0)
            return r.custom_id, Result(None, None, error=f"{type(e).__name__}: {str(e)[:200]}")
        result = _result_from_body(body, prices, batch=False)
        budget.settle(est, result.cost_usd)
        if result.ok:
            cache.put(r, result)
        return r.custom_id, result

    from tqdm.auto import tqdm
    with ThreadPoolExecutor(max_workers=int(cfg.get("concurrency", 8))) as pool:
        for cid, res in tqdm(pool.map(one, todo), total=len(todo), desc="synth (sync)", disable=not todo):
            results[cid] = res
    return results


def _expected_output(r: Request, cfg: Mapping[str, Any]) -> float:
    if cfg.get("budget_worst_case", False):
        return float(r.body["max_tokens"])
    return min(float(r.body["max_tokens"]), float(cfg.get("expected_output_tokens", 800)))


# ------------------------------------------------------------------------------------------------ batch mode
class Ledger:
    """Submitted batches (JSONL, rewritten atomically): {batch_id, input_file_id, custom_ids, attempt, done}."""

    def __init__(self, path: str):
        self.path = path
        self.entries: list[dict[str, Any]] = []
        if os.path.exists(path):
            self.entries = [json.loads(line) for line in open(path) if line.strip()]

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self._write()

    def mark_done(self, batch_id: str) -> None:
        for e in self.entries:
            if e["batch_id"] == batch_id:
                e["done"] = True
        self._write()

    def _write(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in self.entries))

    def in_flight(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if not e.get("done")]

    def attempts(self, custom_id: str) -> int:
        return sum(custom_id in e["custom_ids"] for e in self.entries)


def _batch_files(requests: Sequence[Request], max_requests: int, max_bytes: int) -> list[tuple[list[str], bytes]]:
    files, ids, buf, size = [], [], [], 0
    for r in requests:
        line = (json.dumps({"custom_id": r.custom_id, "method": "POST", "url": "/v1/chat/completions",
                            "body": r.body}) + "\n").encode()
        if ids and (len(ids) >= max_requests or size + len(line) > max_bytes):
            files.append((ids, b"".join(buf)))
            ids, buf, size = [], [], 0
        ids.append(r.custom_id)
        buf.append(line)
        size += len(line)
    if ids:
        files.append((ids, b"".join(buf)))
    return files


def run_batch(requests: Sequence[Request], client, cache: RequestCache, budget: Budget, prices: Prices,
              cfg: Mapping[str, Any], ledger: Ledger, sleep: Callable[[float], None] = time.sleep
              ) -> dict[str, Result]:
    by_id = {r.custom_id: r for r in requests}
    results: dict[str, Result] = {}
    for r in requests:
        hit = cache.get(r)
        if hit is not None and hit.ok:
            results[r.custom_id] = hit
    max_attempts = int(cfg.get("max_attempts", 3))
    poll_base, poll_cap = float(cfg.get("poll_interval_s", 30.0)), float(cfg.get("poll_max_s", 600.0))
    reservations: dict[str, float] = {}

    def submit(ids: list[str], payload: bytes, attempt: int) -> None:
        est = sum(prices.cost(estimate_tokens(by_id[i].body["messages"]), _expected_output(by_id[i], cfg), True)
                  for i in ids)
        budget.reserve(est, f"a batch of {len(ids)} requests")
        f = client.files.create(file=("requests.jsonl", io.BytesIO(payload)), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"description": f"bolt_jax synth attempt {attempt}"})
        reservations[b.id] = est
        ledger.add({"batch_id": b.id, "input_file_id": f.id, "custom_ids": ids, "attempt": attempt,
                    "submitted_at": time.time(), "estimate_usd": est})
        log.info("submitted batch %s (%d requests, ~$%.4f)", b.id, len(ids), est)

    def collect(entry: dict[str, Any]) -> None:
        wait, b = poll_base, client.batches.retrieve(entry["batch_id"])
        while b.status not in ("completed", "failed", "expired", "cancelled"):
            sleep(wait)
            wait = min(poll_cap, wait * 1.5)
            b = client.batches.retrieve(entry["batch_id"])
        seen: set[str] = set()
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            for line in client.files.content(file_id).text.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                cid = item["custom_id"]
                seen.add(cid)
                resp = item.get("response") or {}
                if resp.get("status_code") == 200 and cid in by_id:
                    res = _result_from_body(resp["body"], prices, batch=True)
                    budget.settle(0.0, res.cost_usd)
                    results[cid] = res
                    if res.ok:
                        cache.put(by_id[cid], res)
                elif cid in by_id and cid not in results:
                    err = (item.get("error") or {}).get("message") or f"HTTP {resp.get('status_code')}"
                    results[cid] = Result(None, None, error=f"batch {b.status}: {err}")
        for cid in entry["custom_ids"]:
            if cid not in seen and cid in by_id and cid not in results:
                results[cid] = Result(None, None, error=f"batch {b.status}: no output")
        budget.settle(reservations.pop(entry["batch_id"], entry.get("estimate_usd", 0.0)), 0.0)
        ledger.mark_done(entry["batch_id"])

    # 1. batches already in flight from an earlier run: collect them instead of paying again
    for entry in ledger.in_flight():
        budget.reserve(entry.get("estimate_usd", 0.0), f"batch {entry['batch_id']} (in flight)")
        reservations[entry["batch_id"]] = entry.get("estimate_usd", 0.0)
        collect(entry)
    # 2. submit what is missing; collect; resubmit failures
    while True:
        todo = [r for r in requests if not (r.custom_id in results and results[r.custom_id].ok)
                and ledger.attempts(r.custom_id) < max_attempts]
        if not todo:
            break
        attempt = 1 + max(ledger.attempts(r.custom_id) for r in todo)
        for r in todo:
            results.pop(r.custom_id, None)
        for ids, payload in _batch_files(todo, int(cfg.get("max_requests_per_batch", 50000)),
                                         int(cfg.get("max_batch_bytes", 190 * 1024 * 1024))):
            submit(ids, payload, attempt)
        for entry in ledger.in_flight():
            collect(entry)
    return results
