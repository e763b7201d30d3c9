"""Batch mode pays for each request once (issue 20, item 4): a kill at every step of the submit path, or a
`batches.create` that times out after the server made the batch, is followed by a restart that finishes the job,
and the loopback server has created (billed) every request exactly once."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import openai
import pytest

from bolt_jax.synth.api import Ledger, make_client
from bolt_jax.synth.run import build_requests, run_synth
from tests.helpers import repo_root, synth_config

# the loopback server (synth_server), its corpus (synth_corpus) and the API key: the fixtures in conftest.py
pytestmark = pytest.mark.usefixtures("openai_api_key")

PER_BATCH = 3  # several batches per run, so a kill can land on the first one or a later one


class Killed(BaseException):
    """A simulated kill: a BaseException, so no `except Exception` on the way out can handle it."""


def _noop(_):
    return None


def _batch_config(tmp_path, synth_corpus, synth_server, **kw):
    return synth_config(tmp_path, synth_corpus, synth_server, mode="batch", max_requests_per_batch=PER_BATCH, **kw)


def _ledger(tmp_path):
    path = tmp_path / "out" / "aug.synth_cache" / "ledger.jsonl"
    return [json.loads(line) for line in open(path)] if path.exists() else []


def _assert_paid_once(c, tmp_path, synth_server, out, others=0):
    """Every request was in exactly one created batch and completed exactly once; the ledger accounts for every
    batch the server made (but `others`, made by someone else with an empty file), and the job is done."""
    ids = [r.custom_id for r in build_requests([json.loads(line) for line in open(c.synth.corpus_path)],
                                               c.synth)[0]]
    assert sorted(synth_server.batch_requests) == sorted(ids)
    assert sum(synth_server.batch_requests.values()) == len(ids)  # billed (created) exactly once each
    assert sum(synth_server.billed.values()) == len(ids) and set(synth_server.billed.values()) == {1}
    ours = {bid for bid, b in synth_server.batches.items() if synth_server.files[b["input_file_id"]]["data"]}
    assert len(ours) == -(-len(ids) // PER_BATCH) and len(synth_server.batches) == len(ours) + others
    ledger = _ledger(tmp_path)
    assert all(e["done"] and e["batch_id"] for e in ledger)
    assert {e["batch_id"] for e in ledger} == ours
    assert out["failed"] == 0 and out["documents_written"] == 4


def _killing(orig, nth, where):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        result = orig(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == nth:
            raise Killed(where)
        return result
    return wrapper


def _arm(mp, client, point, nth):
    """Makes the `nth` call of the step kill the run right after the step is done."""
    if point == "after_upload":
        mp.setattr(client.files, "create", _killing(client.files.create, nth, point))
    elif point == "after_intent":
        mp.setattr(Ledger, "add", _killing(Ledger.add, nth, point))
    elif point == "after_create":
        mp.setattr(client.batches, "create", _killing(client.batches.create, nth, point))
    else:
        mp.setattr(Ledger, "record_batch", _killing(Ledger.record_batch, nth, point))


@pytest.mark.parametrize("nth", [1, 2])
@pytest.mark.parametrize("point", ["after_upload", "after_intent", "after_create", "after_ledger_write"])
def test_kill_at_each_submit_step_then_restart_pays_once(tmp_path, synth_corpus, synth_server, point, nth):
    c = _batch_config(tmp_path, synth_corpus, synth_server)
    client = make_client(c.synth)
    with pytest.MonkeyPatch.context() as mp:
        _arm(mp, client, point, nth)
        with pytest.raises(Killed, match=point):
            run_synth(c, client=client, sleep=_noop)
    made = len(synth_server.batches)
    assert made == nth - (point in ("after_upload", "after_intent"))  # the kill landed where it should
    intents = [e for e in _ledger(tmp_path) if not e["batch_id"]]
    assert len(intents) == (point in ("after_intent", "after_create"))
    out = run_synth(c, sleep=_noop)
    _assert_paid_once(c, tmp_path, synth_server, out)
    assert synth_server.list_calls == len(intents)  # an intent is looked up once; nothing else lists batches


def test_create_timeout_after_the_batch_was_made_is_looked_up_not_resubmitted(tmp_path, synth_corpus, synth_server):
    c = _batch_config(tmp_path, synth_corpus, synth_server, timeout_s=1.0)
    synth_server.create_faults = [{}, {"sleep": 1.5}, {"status": 500}]  # 2nd: made but too late; 3rd: refused, not made
    out = run_synth(c, sleep=_noop)
    _assert_paid_once(c, tmp_path, synth_server, out)
    assert synth_server.list_calls == 2  # each failed create was looked up before it was tried again


def test_create_timeout_with_no_retries_left_is_resolved_by_the_restart(tmp_path, synth_corpus, synth_server):
    c = _batch_config(tmp_path, synth_corpus, synth_server, timeout_s=1.0, max_retries=0)
    synth_server.create_faults = [{"sleep": 1.5}]
    with pytest.raises(openai.APITimeoutError):
        run_synth(c, sleep=_noop)
    assert len(synth_server.batches) == 1 and not _ledger(tmp_path)[0]["batch_id"]
    out = run_synth(c, sleep=_noop)
    _assert_paid_once(c, tmp_path, synth_server, out)


def test_lookup_follows_the_list_pages_and_matches_the_tags(tmp_path, synth_corpus, synth_server):
    c = _batch_config(tmp_path, synth_corpus, synth_server)
    client = make_client(c.synth)
    with pytest.MonkeyPatch.context() as mp:
        _arm(mp, client, "after_create", 1)
        with pytest.raises(Killed):
            run_synth(c, client=client, sleep=_noop)
    ours = next(iter(synth_server.batches.values()))
    fid = _ledger(tmp_path)[0]["input_file_id"]
    assert ours["metadata"]["bolt_input_file"] == fid == ours["input_file_id"]
    assert ours["metadata"]["bolt_run"] == _ledger(tmp_path)[0]["run"]
    filler = synth_server._add_file(b"", "batch")
    for _ in range(150):  # other work submitted since: ours is now on the second page, newest first
        synth_server._create_batch({"input_file_id": filler, "endpoint": "/v1/chat/completions",
                                    "completion_window": "24h"})
    listed = [b.id for b in client.batches.list(limit=7)]  # the real client's auto-paging over `after`
    assert listed == list(reversed(synth_server.batches)) and synth_server.list_calls == -(-151 // 7)
    synth_server.list_calls = 0
    out = run_synth(c, sleep=_noop)
    assert synth_server.list_calls == 2
    _assert_paid_once(c, tmp_path, synth_server, out, others=150)


KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from openai.resources.batches import Batches
    from bolt_jax.config import base_config
    from bolt_jax.synth.run import default_synth_config, run_synth

    def killing(self, *args, create=Batches.create, **kwargs):  # killed once the server has made the batch
        create(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    Batches.create = killing
    c = base_config()
    c.synth = default_synth_config()
    c.synth.update(json.loads(sys.argv[1]))
    run_synth(c)
""")


def test_sigkill_between_create_and_ledger_write_pays_once(tmp_path, synth_corpus, synth_server):
    c = _batch_config(tmp_path, synth_corpus, synth_server)
    env = dict(os.environ, PYTHONPATH=str(repo_root()))
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(c.synth.to_dict())], env=env,
                       cwd=repo_root(), capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert len(synth_server.batches) == 1 and not _ledger(tmp_path)[0]["batch_id"]
    out = run_synth(c, sleep=_noop)
    _assert_paid_once(c, tmp_path, synth_server, out)
