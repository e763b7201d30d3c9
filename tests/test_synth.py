"""Thought synthesis against a real HTTP server on 127.0.0.1 speaking the OpenAI API to the real `openai` client,
with injected faults: exactly-once results and billing, retries, budget cap, resume after a crash, no key on disk."""

import json
import os

import numpy as np
import pytest

from bolt_jax.synth import prompts
from bolt_jax.synth.api import BudgetExceeded
from bolt_jax.synth.run import run_synth
from tests.helpers import OPENAI_TEST_KEY, synth_config

# the loopback server (synth_server), its corpus (synth_corpus) and the API key: the fixtures in conftest.py
pytestmark = pytest.mark.usefixtures("openai_api_key")


def _assert_key_not_on_disk(*dirs):
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in files:
                assert OPENAI_TEST_KEY.encode() not in open(os.path.join(root, f), "rb").read(), f


def test_sync_retries_429_500_timeout_exactly_once(tmp_path, synth_corpus, synth_server):
    waits = []
    synth_server.faults = [{"status": 429, "retry_after": "0.3"}, {"status": 500}, {"sleep": 1.5}, {"status": 503}]
    c = synth_config(tmp_path, synth_corpus, synth_server, mode="sync", concurrency=1)
    out = run_synth(c, sleep=lambda s: waits.append(s))
    assert any(w >= 0.3 for w in waits)  # Retry-After honoured
    assert len(waits) == 4  # one retry per injected fault (the timeout included)
    assert set(synth_server.billed.values()) == {1}  # every prompt billed exactly once
    assert out["failed"] == 0 and out["truncated"] == 1
    records = [json.loads(l) for l in open(out["output_path"])]
    assert len(records) == 4 and all(c["latent"].startswith("thought ") for r in records for c in r["chunks"])
    flagged = [c for r in records for c in r["chunks"] if c.get("truncated")]
    assert len(flagged) == 1 and "TRUNCATE-ME" in flagged[0]["suffix"]
    stats = json.loads(open(out["stats_path"]).read())
    expected_cost = (stats["tokens_in"] * 0.15 + stats["tokens_out"] * 0.60) / 1e6  # gpt-4o-mini, sync price
    assert stats["cost_usd"] == pytest.approx(expected_cost)
    auth = [{k.lower(): v for k, v in h.items()}.get("authorization") for h in synth_server.seen_headers]
    assert auth and all(a == f"Bearer {OPENAI_TEST_KEY}" for a in auth)
    # a rerun costs nothing: every request comes from the cache
    billed = sum(synth_server.billed.values())
    again = run_synth(c)
    assert sum(synth_server.billed.values()) == billed and again["cached"] == again["requests"]
    _assert_key_not_on_disk(tmp_path)


def test_empty_outputs_are_excluded_and_counted(tmp_path, synth_corpus, synth_server):
    synth_corpus.write_text(synth_corpus.read_text() + json.dumps({"id": "bad", "text": "EMPTY-ME please."}) + "\n")
    out = run_synth(synth_config(tmp_path, synth_corpus, synth_server, mode="sync", max_retries=0))
    assert out["documents_excluded"] == 1 and out["failed"] == 1
    ids = [json.loads(l)["id"] for l in open(out["output_path"])]
    assert "bad" not in ids and len(ids) == 4


def test_budget_cap_refuses_before_sending(tmp_path, synth_corpus, synth_server):
    c = synth_config(tmp_path, synth_corpus, synth_server, mode="sync", max_usd=0.0001, concurrency=1)
    with pytest.raises(BudgetExceeded, match="synth.max_usd"):
        run_synth(c)
    assert sum(synth_server.billed.values()) == 0
    est = run_synth(synth_config(tmp_path, synth_corpus, synth_server, estimate_only=True))["estimate"]
    assert est["requests"] > 4 and est["usd"] > 0 and sum(synth_server.billed.values()) == 0


def test_batch_failed_lines_and_expired_batch_are_resubmitted_once(tmp_path, synth_corpus, synth_server):
    c = synth_config(tmp_path, synth_corpus, synth_server, mode="batch", max_requests_per_batch=3)
    synth_server.batch_fail_ids = {"doc0-chunk0", "doc3-chunk0"}
    synth_server.expire_next_batch = True
    out = run_synth(c)
    assert out["failed"] == 0 and out["documents_written"] == 4
    assert set(synth_server.billed.values()) == {1}  # nothing paid twice
    ledger = [json.loads(l) for l in open(tmp_path / "out" / "aug.synth_cache" / "ledger.jsonl")]
    assert all(e["done"] for e in ledger) and max(e["attempt"] for e in ledger) == 2
    stats = json.loads(open(out["stats_path"]).read())
    assert stats["cost_usd"] == pytest.approx((stats["tokens_in"] * 0.15 + stats["tokens_out"] * 0.60) / 2e6)
    _assert_key_not_on_disk(tmp_path)


class Killed(Exception):
    pass


def test_batch_crash_after_submission_resumes_without_paying_twice(tmp_path, synth_corpus, synth_server):
    c = synth_config(tmp_path, synth_corpus, synth_server, mode="batch")
    synth_server.polls_to_complete = 3

    def die(_):
        raise Killed()

    with pytest.raises(Killed):
        run_synth(c, sleep=die)  # submitted, then killed while polling
    assert len(synth_server.batches) == 1
    out = run_synth(c, sleep=lambda s: None)
    assert len(synth_server.batches) == 1  # the restart polled the batch in flight instead of submitting again
    assert set(synth_server.billed.values()) == {1} and out["failed"] == 0


def test_wrap_style_seeding_and_records(tmp_path, synth_corpus, synth_server):
    assert [prompts.wrap_style(42, i) for i in range(6)] == \
        [int(np.random.default_rng(42 + i).integers(0, 4)) for i in range(6)]
    out = run_synth(synth_config(tmp_path, synth_corpus, synth_server, method="wrap_baseline", repeats=2, mode="sync"))
    records = [json.loads(l) for l in open(out["output_path"])]
    assert len(records) == 8 and all(r["latent"] and r["latent_length"] == len(r["latent"]) for r in records)
    assert out["requests"] == 8
    # the original's order: repeat 0 of every document in order, then repeat 1 in a shuffled order
    # (np.random.default_rng(42).permutation over the block), so one document's paraphrases lie apart
    ids = [r["id"] for r in records]
    first = ids[:4]
    assert [r["repeat"] for r in records] == [0] * 4 + [1] * 4
    assert first == sorted(first, key=lambda i: [json.loads(l)["id"] for l in open(synth_corpus)].index(i))
    assert ids[4:] == [first[i] for i in np.random.default_rng(42).permutation(4)]


def test_missing_key_is_a_clear_error(tmp_path, synth_corpus, synth_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(Exception, match="OPENAI_API_KEY"):
        run_synth(synth_config(tmp_path, synth_corpus, synth_server))
