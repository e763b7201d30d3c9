"""Shared test setup: 8 simulated CPU devices, no hub access, absl flags parsed (Grain workers need it); and the
fixtures of the thought-synthesis tests."""

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402
from absl import flags  # noqa: E402

from tests.helpers import OPENAI_TEST_KEY, SYNTH_DOCS  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# ---- thought synthesis (test_synth, test_synth_paid_once) ------------------------------------------------------


@pytest.fixture
def synth_server():
    """The loopback HTTP server speaking the OpenAI API (tests/fake_openai.py), with its faults and billing."""
    from tests.fake_openai import FakeOpenAI

    s = FakeOpenAI()
    yield s
    s.close()


@pytest.fixture
def synth_corpus(tmp_path):
    """helpers.SYNTH_DOCS as a JSONL corpus (ids d0..d3)."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(SYNTH_DOCS)))
    return path


@pytest.fixture
def openai_api_key(monkeypatch):
    """OPENAI_API_KEY set to helpers.OPENAI_TEST_KEY: the synth modules use it for all their tests
    (pytestmark = pytest.mark.usefixtures("openai_api_key"))."""
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_TEST_KEY)
