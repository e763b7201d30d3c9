"""The OpenAI side of thought synthesis: client, prices and budget, request cache, retries, sync and Batch modes.

- The API key comes only from the environment (`OPENAI_API_KEY`) or a `.env` file; it is never logged, cached or
  written anywhere. `base_url` points the official client at any OpenAI-compatible server.
- Every request is keyed by (model, resolved parameters, messages); a finished request is cached on disk, so a rerun
  costs nothing and nothing is paid twice.
- The budget refuses to send a request (sync) or submit a batch whose estimated cost would take the run over
  `max_usd`; spending is then accounted from the API's own `usage` fields.
- Batch mode keeps a ledger of submitted batches: after a crash, a restart polls the batches already in flight
  instead of submitting their requests again; failed or expired requests are resubmitted, up to `max_attempts`.
  The ledger records each batch's intent (its uploaded input file and request ids) *before* the batch is created,
  and every batch carries that file id in its metadata, so a kill or a timeout between `batches.create` and the
  ledger write is resolved by looking the batch up (`batches.list`) instead of paying for it twice.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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

    from bolt_jax.runtime import console
    with ThreadPoolExecutor(max_workers=int(cfg.get("concurrency", 8))) as pool:
        for cid, res in console.progress(pool.map(one, todo), total=len(todo), desc="synth (sync)", unit="request",
                                         enabled=bool(todo)):
            results[cid] = res
    return results


def _expected_output(r: Request, cfg: Mapping[str, Any]) -> float:
    if cfg.get("budget_worst_case", False):
        return float(r.body["max_tokens"])
    return min(float(r.body["max_tokens"]), float(cfg.get("expected_output_tokens", 800)))


# ------------------------------------------------------------------------------------------------ batch mode
class Ledger:
    """Batches, one JSON line each (rewritten atomically), keyed by their uploaded input file:
    {input_file_id, custom_ids, attempt, estimate_usd, run, recorded_at, batch_id, done}.

    An entry is written as an *intent* (`batch_id` None) after the upload and before `batches.create`; the batch id
    is filled in once the batch exists. An intent without a batch id may or may not have been created (a kill or a
    timeout in between), so a restart looks it up before creating it (`BatchJob.create`)."""

    def __init__(self, path: str):
        self.path = path
        self.entries: list[dict[str, Any]] = []
        if os.path.exists(path):
            self.entries = [json.loads(line) for line in open(path) if line.strip()]

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self._write()

    def _entry(self, input_file_id: str) -> dict[str, Any]:
        return next(e for e in self.entries if e["input_file_id"] == input_file_id)

    def record_batch(self, input_file_id: str, batch_id: str) -> None:
        self._entry(input_file_id)["batch_id"] = batch_id
        self._write()

    def mark_done(self, input_file_id: str) -> None:
        self._entry(input_file_id)["done"] = True
        self._write()

    def _write(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in self.entries))

    def in_flight(self) -> list[dict[str, Any]]:
        """Entries not collected yet: intents (maybe created, maybe not) and batches submitted."""
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


class BatchJob:
    """One run of requests through the OpenAI Batch API, resumable from the ledger and the cache.

    The Batch API bills half price, but it is asynchronous (results come hours later, in files) and a batch may fail
    lines or expire with part of its work undone, so the job goes through these steps:

    1. Cache: a request with a good cached result is never sent again (nothing is paid twice).
    2. Resume: batches the ledger records as in flight were submitted (and will be billed) by an earlier, killed
       run; they are polled and collected instead of being submitted again. Their estimate is reserved again so
       the cap still holds; an intent without a batch id is looked up first and created only if it does not exist.
    3. Submit: the missing requests are written as JSONL files (within the API's per-file request and byte limits),
       each uploaded with purpose "batch" and turned into a batch; each batch's estimate is reserved against the
       budget *before* its upload (`BudgetExceeded` stops the run before that batch is paid for). The upload goes
       into the ledger as an intent *before* `batches.create`, the batch carries the input file id in its metadata,
       and its id goes into the ledger as soon as it exists. A kill between the two, or a `batches.create` that
       times out after the server made the batch, is resolved by looking the batch up by its input file
       (`batches.list`) before creating it, so a batch is created (and billed) at most once per intent.
    4. Poll: a batch is only usable once it is completed, failed, expired or cancelled; polling backs off
       (x1.5 per poll, up to `poll_max_s`) so a 24 h window does not cost thousands of calls.
    5. Collect: the output file holds the lines that succeeded, the error file the lines that failed; an expired or
       failed batch may have no line at all for some requests. Good results are billed from their `usage` and
       cached; everything else becomes an error result, and the batch's reservation is released.
    6. Retry: failed, empty or missing lines are submitted again in a new round, each request at most
       `max_attempts` times over the whole ledger (earlier runs included), so a persistent failure ends the run
       with an error result instead of an endless loop.
    """

    TERMINAL = ("completed", "failed", "expired", "cancelled")

    def __init__(self, requests: Sequence[Request], client: Any, cache: RequestCache, budget: Budget, prices: Prices,
                 cfg: Mapping[str, Any], ledger: Ledger, sleep: Callable[[float], None] = time.sleep) -> None:
        """`sleep` is injectable so tests can poll without waiting (or simulate a kill while polling)."""
        self.requests, self.client, self.cache, self.budget = requests, client, cache, budget
        self.prices, self.cfg, self.ledger, self.sleep = prices, cfg, ledger, sleep
        self.by_id = {r.custom_id: r for r in requests}
        self.results: dict[str, Result] = {}
        self.reservations: dict[str, float] = {}  # input file id -> estimate reserved, not yet released
        self.max_attempts = int(cfg.get("max_attempts", 3))
        self.poll_base, self.poll_cap = float(cfg.get("poll_interval_s", 30.0)), float(cfg.get("poll_max_s", 600.0))
        self.run_key = hashlib.sha256("".join(sorted(r.key for r in requests)).encode()).hexdigest()[:16]

    def run(self) -> dict[str, Result]:
        """Every request's result (good, or an error once its attempts are used up), keyed by custom id."""
        self.load_cached()
        self.resume()
        while todo := self.pending():
            self.submit_round(todo)
            for entry in self.ledger.in_flight():
                self.collect(entry)
        return self.results

    def load_cached(self) -> None:
        """Good results from the cache: a rerun of a finished job sends and pays for nothing."""
        for r in self.requests:
            hit = self.cache.get(r)
            if hit is not None and hit.ok:
                self.results[r.custom_id] = hit

    def resume(self) -> None:
        """Collects the batches an earlier run submitted but never collected, instead of paying for them again; an
        intent it recorded without a batch id is looked up and created only if the server has no batch for it."""
        entries = self.ledger.in_flight()
        for entry in entries:
            estimate = entry.get("estimate_usd", 0.0)
            self.budget.reserve(estimate, f"batch {entry.get('batch_id') or entry['input_file_id']} (in flight)")
            self.reservations[entry["input_file_id"]] = estimate
        for entry in entries:
            if not entry.get("batch_id"):
                self.create(entry, look_first=True)
        for entry in entries:
            self.collect(entry)

    def pending(self) -> list[Request]:
        """Requests without a good result that still have attempts left (counted over the whole ledger)."""
        return [r for r in self.requests if not (r.custom_id in self.results and self.results[r.custom_id].ok)
                and self.ledger.attempts(r.custom_id) < self.max_attempts]

    def submit_round(self, todo: Sequence[Request]) -> None:
        """Submits `todo` as one attempt, split into as many batch files as the API's size limits need."""
        attempt = 1 + max(self.ledger.attempts(r.custom_id) for r in todo)
        for r in todo:
            self.results.pop(r.custom_id, None)  # an error from an earlier attempt is not the answer any more
        for ids, payload in _batch_files(todo, int(self.cfg.get("max_requests_per_batch", 50000)),
                                         int(self.cfg.get("max_batch_bytes", 190 * 1024 * 1024))):
            self.submit(ids, payload, attempt)

    def submit(self, ids: list[str], payload: bytes, attempt: int) -> None:
        """Reserves the estimate, uploads the JSONL file, records the intent in the ledger, then creates the batch."""
        est = sum(self.prices.cost(estimate_tokens(self.by_id[i].body["messages"]),
                                   _expected_output(self.by_id[i], self.cfg), True) for i in ids)
        self.budget.reserve(est, f"a batch of {len(ids)} requests")
        f = self.client.files.create(file=("requests.jsonl", io.BytesIO(payload)), purpose="batch")
        entry = {"batch_id": None, "input_file_id": f.id, "custom_ids": ids, "attempt": attempt, "run": self.run_key,
                 "recorded_at": time.time(), "estimate_usd": est}
        self.reservations[f.id] = est
        self.ledger.add(entry)  # the intent: from here on a restart looks the batch up before creating it
        self.create(entry, look_first=False)

    def create(self, entry: dict[str, Any], look_first: bool) -> None:
        """Creates the batch of a ledger intent at most once and records its id. Before every try but a fresh
        intent's first, the batch is looked up by its input file: a killed run or a timed-out `batches.create` may
        have made it already. 429, 5xx, timeouts and connection errors are retried with backoff, like requests."""
        import openai
        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)
        tries = int(self.cfg.get("max_retries", 6))
        base, cap = float(self.cfg.get("backoff_base_s", 1.0)), float(self.cfg.get("backoff_max_s", 60.0))
        fid = entry["input_file_id"]
        for attempt in range(tries + 1):
            try:
                b = self.find_batch(fid) if (look_first or attempt) else None
                if b is not None:
                    log.info("found batch %s already created for input file %s", b.id, fid)
                else:
                    b = self.client.batches.create(input_file_id=fid, endpoint="/v1/chat/completions",
                                                   completion_window="24h", metadata=self.metadata(entry))
                    log.info("submitted batch %s (%d requests, ~$%.4f)", b.id, len(entry["custom_ids"]),
                             entry.get("estimate_usd", 0.0))
                break
            except retryable as e:
                if attempt == tries:
                    raise
                wait = min(cap, base * 2 ** attempt) * (0.5 + random.random())
                log.warning("batch for input file %s: %s; looking it up, then retry %d/%d in %.1fs", fid,
                            type(e).__name__, attempt + 1, tries, wait)
                self.sleep(wait)
        self.ledger.record_batch(fid, b.id)

    def metadata(self, entry: Mapping[str, Any]) -> dict[str, str]:
        """The batch's tags: the run (a hash of this job's request keys) and the input file it was created for."""
        return {"description": f"bolt_jax synth attempt {entry['attempt']}", "bolt_run": str(entry.get("run", "")),
                "bolt_input_file": entry["input_file_id"]}

    def find_batch(self, input_file_id: str) -> Any | None:
        """A batch already created for this input file (in flight or finished), from every page of `batches.list`;
        None if there is none. Matched by the batch's own `input_file_id` or by the `bolt_input_file` tag."""
        for b in self.client.batches.list(limit=100):  # the client follows the `after` cursor page by page
            if b.input_file_id == input_file_id or (b.metadata or {}).get("bolt_input_file") == input_file_id:
                return b
        return None

    def poll(self, batch_id: str) -> Any:
        """The batch once it has reached a terminal status, polling with a growing interval until then."""
        wait, b = self.poll_base, self.client.batches.retrieve(batch_id)
        while b.status not in self.TERMINAL:
            self.sleep(wait)
            wait = min(self.poll_cap, wait * 1.5)
            b = self.client.batches.retrieve(batch_id)
        return b

    def collect(self, entry: dict[str, Any]) -> None:
        """Waits for one ledger batch, records a result for each of its requests, releases its reservation and
        marks it done (only then, so a kill while collecting resumes this batch)."""
        b = self.poll(entry["batch_id"])
        seen: set[str] = set()
        for file_id in (b.output_file_id, b.error_file_id):
            if file_id:
                seen.update(self.record_file(file_id, b.status))
        for cid in entry["custom_ids"]:
            if cid not in seen and cid in self.by_id and cid not in self.results:
                self.results[cid] = Result(None, None, error=f"batch {b.status}: no output")
        self.budget.settle(self.reservations.pop(entry["input_file_id"], entry.get("estimate_usd", 0.0)), 0.0)
        self.ledger.mark_done(entry["input_file_id"])

    def record_file(self, file_id: str, status: str) -> set[str]:
        """Records every line of a batch output or error file; returns the custom ids it had a line for."""
        seen: set[str] = set()
        for line in self.client.files.content(file_id).text.splitlines():
            if line.strip():
                item = json.loads(line)
                seen.add(item["custom_id"])
                self.record_line(item, status)
        return seen

    def record_line(self, item: Mapping[str, Any], status: str) -> None:
        """A 200 line is billed from its usage and cached if good; a failed line becomes an error result unless the
        request already has one (ids not in this job, e.g. from an old ledger, are ignored)."""
        cid = item["custom_id"]
        resp = item.get("response") or {}
        if resp.get("status_code") == 200 and cid in self.by_id:
            res = _result_from_body(resp["body"], self.prices, batch=True)
            self.budget.settle(0.0, res.cost_usd)
            self.results[cid] = res
            if res.ok:
                self.cache.put(self.by_id[cid], res)
        elif cid in self.by_id and cid not in self.results:
            err = (item.get("error") or {}).get("message") or f"HTTP {resp.get('status_code')}"
            self.results[cid] = Result(None, None, error=f"batch {status}: {err}")


def run_batch(requests: Sequence[Request], client: Any, cache: RequestCache, budget: Budget, prices: Prices,
              cfg: Mapping[str, Any], ledger: Ledger, sleep: Callable[[float], None] = time.sleep
              ) -> dict[str, Result]:
    """Batch mode (half price): runs a `BatchJob` over `requests`; see it for the steps and how faults are handled."""
    return BatchJob(requests, client, cache, budget, prices, cfg, ledger, sleep).run()
