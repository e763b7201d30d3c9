"""The E-step end to end on a tiny model: scores against the HF model (torch) as oracle, kill-and-resume and
slices against an uninterrupted run."""

import json

import numpy as np
import pytest
import torch

from bolt_jax.config import base_config
from bolt_jax.data import toy
from bolt_jax.estep import sequences
from bolt_jax.estep.run import default_estep_config, run_estep
from tests.helpers import build_hf_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from convert.hf_to_orbax import convert_hf_to_orbax
    root = tmp_path_factory.mktemp("estep")
    hf_dir = build_hf_model(root / "hf")
    convert_hf_to_orbax(hf_dir, str(root / "ckpt"))
    toy.write_corpus(root / "corpus.jsonl", toy.generate(5, seed=3, max_problems=2))
    return root, hf_dir


def estep_config(root, run_dir, **overrides):
    c = base_config()
    c.run_dir = str(run_dir)
    c.model.compute_dtype = "float32"
    c.estep = default_estep_config()
    c.estep.update(corpus_path=str(root / "corpus.jsonl"), checkpoint=str(root / "ckpt"),
                   output_path=str(run_dir / "augmented.jsonl"), num_samples=3, max_new_tokens=6,
                   chunks_per_batch=4, split_mode="paragraph", random_chunking=False, units_per_chunk=1,
                   max_tokens=160)
    c.estep.update(overrides)
    return c


def test_estep_scores_match_the_hf_oracle(setup, tmp_path):
    from transformers import LlamaForCausalLM

    from bolt_jax.data.tokenizer import load_tokenizer
    root, hf_dir = setup
    c = estep_config(root, tmp_path)
    result = run_estep(c)
    assert result["documents"] == 5 and result["chunks"] == result["chunks_this_run"] > 5
    rows = [json.loads(line) for line in open(result["output_path"])]
    assert all(r["num_chunks"] == len(r["chunks"]) and r["chunks"][0]["latent"] is not None for r in rows)
    stats = json.loads(open(result["stats_path"]).read())
    assert 1.0 <= stats["mean_ess"] <= 3.0 and stats["samples"] == 3 * stats["chunks"]

    # one stored chunk, re-derived with the torch model
    from bolt_jax.estep.store import ResultStore
    store_rows = list(ResultStore(c.run_dir + "/estep_store", run="estep", iteration=1,
                                  settings=json.load(open(next((tmp_path / "estep_store").rglob("settings.json"))))
                                  ).rows())
    row = sorted(store_rows, key=lambda r: r["chunk_id"])[1]
    tok = load_tokenizer(hf_dir)
    hf = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    records = [json.loads(line) for line in open(root / "corpus.jsonl")]
    from bolt_jax.data.chunking import ChunkingConfig, chunk_text
    pair = chunk_text(records[row["doc_index"]]["text"], ChunkingConfig(split_mode="paragraph",
                                                                        random_chunking=False, units_per_chunk=1,
                                                                        num_prefix_chunks=3))[row["chunk_index"]]
    joint = sequences.joint_sequences(tok, pair.prefix, row["latents"], pair.suffix, 160)
    prompt = sequences.posterior_prompt_tokens(tok, pair.prefix, pair.suffix, 1024).tokens
    for k, latent in enumerate(row["latents"]):
        seq = joint.sequences[k]
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([seq])).logits[0].double(), -1)
        expected_joint = sum(lp[j - 1, seq[j]].item() for j in range(joint.score_from, len(seq)))
        assert row["joint_logprob"][k] == pytest.approx(expected_joint, abs=2e-3)
        # log q at temperature 1 = log p of the sampled tokens (plus <EoL> when generated) given the prompt
        gen = row["latent_tokens"][k] + ([tok.special_ids["<|END_OF_LATENT|>"]] if row["done"][k] else [])
        assert tok.decode(row["latent_tokens"][k]) == latent
        full = prompt + gen
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([full])).logits[0].double(), -1)
        expected_q = sum(lp[j - 1, full[j]].item() for j in range(len(prompt), len(full)))
        assert row["gen_logprob"][k] == pytest.approx(expected_q, abs=2e-3)
        assert row["log_weight"][k] == pytest.approx(row["joint_logprob"][k] - row["gen_logprob"][k])


class Crash(RuntimeError):
    pass


def test_kill_and_resume_and_slices_give_the_same_dataset(setup, tmp_path):
    from bolt_jax.estep.backend import JaxBackend
    root, _ = setup
    straight = run_estep(estep_config(root, tmp_path / "straight"))
    expected = open(straight["output_path"]).read()

    # a run that dies after its second batch, then a rerun
    c = estep_config(root, tmp_path / "killed")
    backend, tokenizer, model_id = JaxBackend.from_config(c)
    calls = {"n": 0}
    real_stream = backend.sample_stream  # the continuous scheduler (the default) streams the batches

    def dying_stream(batches, *, n):
        for item in real_stream(batches, n=n):
            calls["n"] += 1
            if calls["n"] == 3:
                raise Crash("killed")
            yield item

    backend.sample_stream = dying_stream
    with pytest.raises(Crash):
        run_estep(c, backend, tokenizer, model_id)
    calls["n"] = -10**6  # no more crashes; count the sampler calls of the rerun
    resumed = run_estep(c, backend, tokenizer, model_id)
    batches = -(-straight["chunks"] // 4)
    assert calls["n"] + 10**6 == batches - 2  # only the unfinished batches are sampled again
    assert open(resumed["output_path"]).read() == expected

    # two independent slice jobs, then the merge
    for i in range(2):
        out = run_estep(estep_config(root, tmp_path / "sliced", slice=f"{i}:2"))
    assert "output_path" in out  # the last slice to finish merges
    assert open(out["output_path"]).read() == expected


def test_the_merged_dataset_is_the_same_under_both_schedulers(setup, tmp_path):
    """The continuous engine (two slots, so slots are reused within a batch), with and without prefix sharing
    (prompt entries shared by each chunk's samples), writes the static path's dataset: the same thoughts chosen for
    every chunk; the log weights and ELBOs agree to float rounding (the decode runs at other batch shapes, and XLA's
    matmuls round differently per shape: about 1e-9 relative here)."""
    root, _ = setup
    out = {}
    variants = {"static": {}, "continuous": {}, "shared": {"prefix_sharing": True, "prompt_entries": 1}}
    for name, extra in variants.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        result = run_estep(estep_config(root, run_dir, scheduler="static" if name == "static" else "continuous",
                                        decode_slots=2, max_new_tokens=12, temperature=1.5, **extra))
        out[name] = [json.loads(line) for line in open(result["output_path"])]

    def split(value):
        """(everything but the floats, the floats) of a record, recursively."""
        if isinstance(value, float):
            return None, [value]
        if isinstance(value, dict):
            parts = {k: split(v) for k, v in sorted(value.items())}
            return {k: p[0] for k, p in parts.items()}, [x for p in parts.values() for x in p[1]]
        if isinstance(value, list):
            parts = [split(v) for v in value]
            return [p[0] for p in parts], [x for p in parts for x in p[1]]
        return value, []

    for name in ("continuous", "shared"):
        assert len(out["static"]) == len(out[name]) > 0
        for a, b in zip(out["static"], out[name], strict=True):
            (exact_a, floats_a), (exact_b, floats_b) = split(a), split(b)
            assert exact_a == exact_b  # thoughts, chunk texts, counts
            np.testing.assert_allclose(floats_a, floats_b, rtol=1e-6)


def test_overlapped_scoring_writes_the_same_dataset_and_a_crash_in_it_loses_nothing(setup, tmp_path):
    """`estep.overlap`: batch b scored and written in a worker thread while batch b+1 is sampled. Same batches, same
    compiled programs, so the dataset is byte-identical to the phases taken in turn; the phase clock sums each
    phase; an error while scoring reaches the caller, and every batch written before it stays done."""
    from bolt_jax.estep.backend import JaxBackend
    root, _ = setup
    out = {}
    for mode in ("off", "on"):
        result = run_estep(estep_config(root, tmp_path / mode, overlap=mode))
        assert result["overlap"] == (mode == "on")
        assert {"sample", "joints", "score", "weigh", "write"} <= set(result["phase_seconds"])
        out[mode] = open(result["output_path"], "rb").read()
    assert out["on"] == out["off"]

    c = estep_config(root, tmp_path / "crash", overlap="on")
    backend, tokenizer, model_id = JaxBackend.from_config(c)
    real_score, calls = backend.score, {"n": 0}

    def dying_score(sequences):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash("scoring failed")
        return real_score(sequences)

    backend.score = dying_score
    with pytest.raises(Crash):
        run_estep(c, backend, tokenizer, model_id)
    assert len(list((tmp_path / "crash" / "estep_store").rglob("*.jsonl"))) == 1  # batch 0 written, batch 1 not
    backend.score = real_score
    assert open(run_estep(c, backend, tokenizer, model_id)["output_path"], "rb").read() == out["off"]


def test_overlap_modes_are_validated():
    e = default_estep_config()
    e.overlap = "sometimes"
    with pytest.raises(ValueError, match="estep.overlap='sometimes'"):
        from bolt_jax.estep.run import overlap_enabled
        overlap_enabled(e)


def test_another_model_saved_at_the_same_path_gets_a_fresh_store(setup, tmp_path):
    """The store is keyed by the model's identity (its path and the id written when it was saved), not the path
    alone: a model retrained into the same directory never reuses the old model's samples."""
    from convert.hf_to_orbax import convert_hf_to_orbax
    from tests.helpers import build_hf_model
    root, _ = setup
    ckpt = tmp_path / "model"
    convert_hf_to_orbax(build_hf_model(tmp_path / "hf_a", seed=1), str(ckpt))
    c = estep_config(root, tmp_path / "run", checkpoint=str(ckpt), limit_docs=2, output_path="")
    first = run_estep(c)
    assert run_estep(c)["chunks_this_run"] == 0  # the same model: every batch reused
    import shutil
    shutil.rmtree(ckpt)
    convert_hf_to_orbax(build_hf_model(tmp_path / "hf_b", seed=2), str(ckpt))
    second = run_estep(c)
    assert second["store"] != first["store"] and second["chunks_this_run"] == second["chunks"] > 0
