"""Evaluation: grading on literal model outputs, prompts on literal strings, and an end-to-end run of a tiny model
through the JAX sampler on GSM8K lines."""

import json
import math

import numpy as np
import pytest

from bolt_jax.eval import grading, prompts
from bolt_jax.eval.fewshot import Example, bootstrap_se, evaluate_fewshot, mean_and_se, read_gsm8k, sampler_generate_fn

SOL, EOL, PRIOR = "<|START_OF_LATENT|>", "<|END_OF_LATENT|>", "<|PRIOR_PREFIX|>"


@pytest.mark.parametrize("text, strict, flexible", [
    (" She sold 48/2 = 24 clips. The answer is 72.", "72", "72"),
    (" It costs $1,250. The answer is $1,250.", None, "1250"),  # strict needs digits right after "is "
    (" The answer is 1,250.", "1250", "1250"),
    (" So 3 + 4 = 7 and then 7 * 2 = 14", None, "14"),
    (" I don't know.", None, None),
    (" The answer is -3.", "-3", "-3"),
])
def test_gsm8k_extraction_on_literal_outputs(text, strict, flexible):
    assert grading.gsm8k_strict(text) == strict
    assert grading.gsm8k_flexible(text) == flexible


def test_latent_variant_grades_after_the_thought():
    text = "48/2 = 24. 48 + 24 = 72. The answer is 99." + EOL + " The answer is 72."
    assert grading.gsm8k_strict(text, latent=True) == "72"
    assert grading.gsm8k_strict(text) == "99"
    assert grading.gsm8k_gold("Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72") == "72"
    assert grading.normalize_number("$1,000.") == "1000"


@pytest.mark.parametrize("pred, gold, ok", [
    ("... Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "so $\\boxed{0.5}$", True),
    ("The final answer is $42$.", "Thus $\\boxed{42}$.", True),
    ("The final answer is $41$.", "Thus $\\boxed{42}$.", False),
    ("no answer here", "Thus $\\boxed{42}$.", False),
])
def test_math_equivalence(pred, gold, ok, monkeypatch):
    assert grading.math_equivalent(pred, gold) == ok  # math-verify
    import builtins
    real_import = builtins.__import__

    def no_math_verify(name, *a, **k):
        if name.startswith("math_verify"):
            raise ImportError
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    assert grading.math_equivalent(pred, gold) == ok  # the fallback
    assert grading.last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"


def test_pass_at_k_and_majority():
    assert grading.pass_at_k(4, 0, 1) == 0 and grading.pass_at_k(4, 4, 2) == 1
    assert grading.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert grading.pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert grading.majority(["3", None, "4", "3"]) == "3"
    m, se = mean_and_se([0.5, 0.7, 0.6])
    assert m == pytest.approx(0.6) and se == pytest.approx(0.1 / math.sqrt(3))
    assert bootstrap_se([1, 0] * 50) == pytest.approx(0.05, abs=0.01)


def test_prompt_variants_on_literal_strings():
    ex = [{"question": "What is 2 + 3?", "reasoning": "2 + 3 = 5.", "answer": "5"}]
    v = prompts.VARIANTS
    assert prompts.build_prompt(v["gsm8k_cot"], "What is 4 + 4?", ex) == \
        "Q: What is 2 + 3?\nA: 2 + 3 = 5. The answer is 5.\n\nQ: What is 4 + 4?\nA:"
    assert prompts.build_prompt(v["latent_gsm8k_cot"], "What is 4 + 4?", ex) == \
        f"Q: What is 2 + 3?\nA:{SOL}{PRIOR}2 + 3 = 5.{EOL} The answer is 5.\n\nQ: What is 4 + 4?\nA:{SOL}{PRIOR}"
    m = [{"problem": "Solve $x+1=2$.", "reasoning": "$x = 1$.", "answer": "1"}]
    assert prompts.build_prompt(v["math_cot"], "Find $y$.", m) == (
        "Problem:\nSolve $x+1=2$.\n\nSolution: $x = 1$.\nFinal Answer: The final answer is $1$. I hope it is "
        "correct.\n\nProblem:\nFind $y$.\n\nSolution:")
    assert prompts.build_prompt(v["latent_math_cot"], "Find $y$.", m) == (
        f"Problem:\nSolve $x+1=2$.\n{SOL}{PRIOR}$x = 1$.\nThe final answer is $1$. I hope it is correct.\n{EOL} "
        f"Final Answer: The final answer is $1$. I hope it is correct.\n\nProblem:\nFind $y$.\n{SOL}{PRIOR}")
    assert set(v["gsm8k_cot"].banned) == {SOL, EOL, PRIOR, "<|POSTERIOR_PREFIX|>"} and not v["latent_gsm8k_cot"].banned
    assert SOL in v["latent_gsm8k_cot"].stop_strings
    assert len(prompts.load_exemplars("gsm8k")) == 8 and len(prompts.load_exemplars("math")) == 4


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from bolt_jax.data.tokenizer import load_tokenizer
    from tests.helpers import build_tokenizer
    return load_tokenizer(build_tokenizer(tmp_path_factory.mktemp("tok")))


def test_prompt_shortening_is_counted(tok):
    v = prompts.VARIANTS["gsm8k_cot"]
    shots = prompts.load_exemplars("gsm8k")
    ids, shortened = prompts.fit_prompts(v, ["What is 2+2?", "What is 3+3?"], shots, tok, 10_000)
    assert shortened == 0
    full = len(ids[0])
    ids, shortened = prompts.fit_prompts(v, ["What is 2+2?", "What is 3+3?"], shots, tok, full - 5)
    assert shortened == 2 and all(len(i) <= full - 5 for i in ids)
    assert tok.decode(ids[0]).endswith("Q: What is 2+2?\nA:")  # the question survives; early exemplars went
    ids, shortened = prompts.fit_prompts(v, ["What is 2+2?"], shots, tok, 50, mode="left_truncate")
    assert shortened == 1 and len(ids[0]) == 50


def test_fewshot_with_literal_outputs_writes_results(tok, tmp_path):
    examples = read_gsm8k("/work/shared/data/gsm8k/test.jsonl", limit=3) if False else [
        Example("a", "Q1", "72"), Example("b", "Q2", "10"), Example("c", "Q3", "5")]
    canned = {0: [" 48 + 24 = 72. The answer is 72.", " The answer is 70.", " The answer is 72."],
              1: [" I think 10", " The answer is 11.", " garbage"],
              2: [" nothing", " nothing", " nothing"]}

    def fake_generate(prompt_ids, *, n, **kw):
        assert kw["stop_strings"] and kw["banned_token_strings"]
        return [canned[i][:n] for i in range(len(prompt_ids))]

    out = evaluate_fewshot(examples, "gsm8k_cot", fake_generate, tokenizer=tok, num_samples=3,
                           output_path=str(tmp_path / "results.json"))
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert m["strict_accuracy"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert m["maj@3"] == pytest.approx(2 / 3)  # a: 72 wins; b: 10 and 11 tie, the first seen (10) wins; c: none
    assert m["pass@1"] == pytest.approx(m["accuracy"]) and m["pass@3"] == pytest.approx(2 / 3)
    assert json.loads((tmp_path / "results.json").read_text())["metrics"]["examples"] == 3


def test_fewshot_progress_counts_prompts_as_the_sampler_finishes_them(tok):
    """`on_done` moves in whole prompts while generation runs: the sampler's finished-sample counts (here 3 samples
    per prompt, reported 2, 5, 2) become prompt increments that sum to the examples; a generate_fn that never calls
    back still ends at the total."""
    examples = [Example(str(i), f"Q{i}", "1") for i in range(3)]

    def reporting(prompt_ids, *, n, on_done, **kw):
        for k in (2, 5, 2):  # samples finished per round, 9 = 3 prompts x 3
            on_done(k)
            seen.append(sum(got))
        return [[" The answer is 1."] * n for _ in prompt_ids]

    got, seen = [], []
    evaluate_fewshot(examples, "gsm8k_cot", reporting, tokenizer=tok, num_samples=3, on_done=got.append)
    assert got == [2, 1] and seen == [0, 2, 3]  # 2 samples: no whole prompt yet; 7: two prompts; 9: all three
    got = []
    evaluate_fewshot(examples, "gsm8k_cot", lambda p, n, **kw: [["x"] * n for _ in p], tokenizer=tok,
                     on_done=got.append)
    assert got == [3]


def test_end_to_end_tiny_model_on_gsm8k(tok, tmp_path):
    """A random tiny model through the real sampler: the pipeline runs and is graded."""
    from bolt_jax.model import create_model, preset
    model = create_model(preset("tiny", vocab_size=len(tok.hf), compute_dtype="float32"))
    fn = sampler_generate_fn(model, tok)
    gsm = read_gsm8k("/work/shared/data/gsm8k/test.jsonl", limit=2) if __import__("os").path.exists(
        "/work/shared/data/gsm8k/test.jsonl") else [Example("x", "What is 2+2?", "4")]
    done: list[int] = []
    out = evaluate_fewshot(gsm, "gsm8k_cot", fn, tokenizer=tok, max_new_tokens=8, max_prompt_tokens=256,
                           output_path=str(tmp_path / "gsm.json"), on_done=done.append)
    assert out["metrics"]["examples"] == len(gsm) and out["metrics"]["prompts_shortened"] >= 0
    assert sum(done) == len(gsm) and all(k > 0 for k in done)  # the sampler's callback, in whole prompts
    assert all(SOL not in o for r in out["records"] for o in r["outputs"])  # banned in plain variants


def test_eval_workflow_on_a_checkpoint(tmp_path):
    import os
    import subprocess
    import sys

    from convert.hf_to_orbax import convert_hf_to_orbax
    from tests.helpers import build_hf_model, repo_root
    convert_hf_to_orbax(build_hf_model(tmp_path / "hf"), str(tmp_path / "ckpt"))
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(l for l in open("/work/shared/data/gsm8k/test.jsonl").readlines()[:2])
                   if os.path.exists("/work/shared/data/gsm8k/test.jsonl") else
                   json.dumps({"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}) + "\n")
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"text": "Ava has 3 apples. The answer is 3."}) + "\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", "--config", "configs/eval_tinyllama.py",
                        f"--config.run_dir={tmp_path}", f"--config.eval.checkpoint={tmp_path / 'ckpt'}",
                        f"--config.eval.gsm8k_path={gsm}", f"--config.eval.validation_path={val}",
                        "--config.eval.max_new_tokens=6", "--config.eval.max_prompt_tokens=200",
                        "--config.eval.elbo_samples=2", "--config.eval.elbo_docs=1",
                        "--config.model.compute_dtype=float32"],
                       cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # the default variants: the paper's synthetic ones (no MATH file given: MATH skipped)
    assert metrics["gsm8k_cot_synthetic_alt"]["examples"] == 2 and "latent_gsm8k_cot_synthetic_alt" in metrics
    assert "hendrycks_math_cot_synthetic" not in metrics
    assert metrics["validation"]["nll_per_token"] > 0
    assert metrics["validation_elbo"]["elbo_2_per_token"] < 0 and metrics["validation_elbo"]["chunks"] >= 1


def test_sft_batches_put_the_loss_on_completions_only(tok):
    from bolt_jax.data.sources import SFTBatches
    from bolt_jax.eval.sft import gsm8k_sft_examples
    ex = gsm8k_sft_examples("/work/shared/data/gsm8k/train.jsonl", raw_baseline=False, limit=3) \
        if __import__("os").path.exists("/work/shared/data/gsm8k/train.jsonl") else None
    if ex is None:
        ex = [{"prompt": "Question: 2+2?\nAnswer:" + SOL + PRIOR, "completion": "2+2=4" + EOL + " The answer is 4.",
               "answer": "4"}]
    assert ex[0]["prompt"].endswith(SOL + PRIOR) and EOL in ex[0]["completion"]
    raw = gsm8k_sft_examples("/work/shared/data/gsm8k/train.jsonl", raw_baseline=True, limit=1)
    assert raw[0]["prompt"].endswith(SOL) and EOL not in raw[0]["completion"]
    b = next(SFTBatches(ex, tok, rows=2, seq_len=1024, seed=0))
    for r in range(2):
        w = b["loss_weights"][r]
        first = int(np.argmax(w > 0))
        targets = b["targets"][r][w > 0].tolist()
        assert targets[-1] == tok.eos_id and tok.decode(targets[:-1]) in [e["completion"] for e in ex]
        assert (b["inputs"][r, first] == tok.special_ids[PRIOR])  # the first weighted target follows the delimiter


# slow (two SFT runs in a subprocess, ~60 s): make test-slow; the lengths are tested by a unit test
@pytest.mark.slow
def test_finetune_eval_workflow_runs(tmp_path):
    import os
    import subprocess
    import sys

    from convert.hf_to_orbax import convert_hf_to_orbax
    from tests.helpers import build_hf_model, repo_root
    convert_hf_to_orbax(build_hf_model(tmp_path / "hf"), str(tmp_path / "ckpt"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    ckpt = tmp_path / "ckpt"
    r = subprocess.run([sys.executable, "-m", "bolt_jax.main", "--config", "configs/finetune_eval_gsm8k.py",
                        f"--config.run_dir={tmp_path / 'ft'}", f"--config.finetune.checkpoint={ckpt},{ckpt}",
                        "--config.finetune.train_path=/work/shared/data/gsm8k/train.jsonl",
                        "--config.finetune.test_path=/work/shared/data/gsm8k/test.jsonl",
                        "--config.finetune.limit_train=8", "--config.finetune.limit_test=2",
                        "--config.finetune.batch_size=8", "--config.finetune.epochs=1", "--config.finetune.seeds=1",
                        "--config.finetune.num_samples=2", "--config.finetune.max_new_tokens=6",
                        "--config.finetune.max_len=256", "--config.train.global_batch_size=8",
                        "--config.train.progress_bar=False", "--config.model.compute_dtype=float32",
                        "--config.model.hf_config=" + str(tmp_path / "ckpt")],
                       cwd=repo_root(), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "ft" / "finetune_eval.json").read_text())
    # two upstream checkpoints (trials) x one seed: two runs, one mean and SE over them
    assert set(result["per_run"]) == {"trial_0_seed_1", "trial_1_seed_1"}
    assert result["test_examples"] == 2 and result["samples_per_prompt"] == 2
    assert result["accuracy_mean"] == pytest.approx(sum(result["per_run"].values()) / 2)
    assert {"train_examples_truncated", "test_prompts_over_context"} <= set(result)


def test_finetune_lengths_are_counted_not_cut_silently():
    from ml_collections import ConfigDict

    from bolt_jax.workflows.finetune import length_report

    class Words:  # one token per word
        def encode(self, text):
            return text.split()

    train = [{"prompt": "a b", "completion": "c d e"},  # BOS + 5 + EOS = 7 tokens: 6 rows of 6 targets fit
             {"prompt": "a b c", "completion": "d e f"}]  # 8 tokens: cut
    test = [{"prompt": "a"}, {"prompt": "a b c"}]  # BOS + 1 + 4 new = 6 fit; BOS + 3 + 4 = 8 do not
    f = ConfigDict({"max_len": 6, "max_new_tokens": 4})
    assert length_report(train, test, Words(), f) == {"train_examples_truncated": 1, "test_prompts_over_context": 1}


def test_benchmark_readers_jsonl_parquet_tfds(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow_datasets as tfds

    from bolt_jax.eval.fewshot import read_gsm8k, read_math
    rows = [{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}, {"question": "3*3?", "answer": "9\n#### 9"}]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "g.parquet")
    assert [e.answer for e in read_gsm8k(str(tmp_path / "g.jsonl"))] == ["4", "9"]
    assert [e.answer for e in read_gsm8k(str(tmp_path / "g.parquet"))] == ["4", "9"]
    math_rows = [{"problem": "1+1?", "solution": "So $\\\\boxed{2}$."}]
    pq.write_table(pa.Table.from_pylist(math_rows), tmp_path / "m.parquet")
    assert read_math(str(tmp_path / "m.parquet"))[0].answer == "2"

    class TinyGsm(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        url_infos = {}  # no checksums file next to this test module

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"question": tfds.features.Text(), "answer": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            yield from enumerate(rows)

    builder = TinyGsm(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare()
    got = read_gsm8k(f"tfds_dir:{builder.data_dir}:test")
    assert sorted(e.answer for e in got) == ["4", "9"]


def test_math_sft_examples_and_grading(tmp_path):
    from bolt_jax.eval.sft import is_correct, math_sft_examples
    (tmp_path / "m.jsonl").write_text(json.dumps({"problem": "Compute $1+1$.", "solution": "We get $\\\\boxed{2}$."})
                                      + "\n")
    ex = math_sft_examples(str(tmp_path / "m.jsonl"), raw_baseline=False)[0]
    assert ex["prompt"] == f"Problem:\nCompute $1+1$.\n{SOL}{PRIOR}"
    assert ex["completion"].endswith(f"{EOL} Final Answer: The final answer is $2$.") and ex["answer"] == "2"
    assert is_correct("math", f"so two{EOL} Final Answer: The final answer is $2$.", ex, raw_baseline=False)
    assert not is_correct("math", f"so three{EOL} Final Answer: The final answer is $3$.", ex, raw_baseline=False)
    raw = math_sft_examples(str(tmp_path / "m.jsonl"), raw_baseline=True)[0]
    assert raw["prompt"].endswith(SOL) and EOL not in raw["completion"]


def test_validation_nll_is_the_mean_over_documents_of_each_documents_nll_per_token(tmp_path):
    """The original's convention (spec 7.3): per document, -sum log p over its tokens after BOS divided by their
    count; then the mean over documents. Oracle: the Hugging Face model's logits, per document."""
    import numpy as np

    from bolt_jax import parallel
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.eval.validation import validation_nll
    from bolt_jax.model import artifact
    from convert.hf_to_orbax import convert_hf_to_orbax
    from tests.helpers import build_hf_model, hf_logits
    hf_dir = build_hf_model(tmp_path / "hf")
    convert_hf_to_orbax(hf_dir, str(tmp_path / "ckpt"))
    tok = load_tokenizer(hf_dir)
    records = [{"text": "Natalia sold clips to 48 of her friends."}, {"text": "Ava has 3 apples."},
               {"text": "A long document about clips and apples, and friends who sold them in April and May."}]
    mesh = parallel.make_mesh()
    model, _, _ = artifact.load_model(tmp_path / "ckpt", mesh, compute_dtype="float32")
    got = validation_nll(model, tok, records, max_tokens=512, mesh=mesh)
    per_doc = []
    for r in records:
        ids = [tok.bos_id] + tok.encode(r["text"])
        logits = hf_logits(hf_dir, [ids])[0]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        per_doc.append(-sum(logp[i - 1, ids[i]] for i in range(1, len(ids))) / (len(ids) - 1))
    assert got["nll_per_token"] == pytest.approx(np.mean(per_doc), rel=1e-4)
    assert got["nll_per_token_se"] == pytest.approx(np.std(per_doc, ddof=1) / np.sqrt(3), rel=1e-3)
