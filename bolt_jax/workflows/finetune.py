"""Finetune-based evaluation (spec 7.4): supervised finetuning on completions only, then sampling, over seeds.

Each example is `prompt <SoL><PRIOR> completion` (`bolt_jax.eval.sft`); the loss covers the completion (and EOS)
only (`bolt_jax.data.sources.SFTBatches`). After training, every test prompt is sampled `num_samples` times
(temperature 0.6, top-p 0.9, top-k 50 in the original) and graded; accuracy is the mean over (prompt x sample),
reported per seed and as mean and standard error over seeds.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np

from bolt_jax.eval.sft import is_correct, sft_examples
from bolt_jax.runtime.atomic import atomic_write_text


def default_finetune_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        # the pretrained model to finetune; several, comma-separated (the upstream trials), give the original's
        # matrix: every checkpoint x every seed, accuracy as mean and SE over all of them
        "checkpoint": "",
        "benchmark": "gsm8k",  # gsm8k ({question, answer}) | math ({problem, solution})
        "train_path": "",  # JSONL (or Parquet / TFDS source) for SFT
        "test_path": "",
        "raw_baseline": False,  # delimiter <SoL> only, <EoL> removed (models trained without thoughts)
        "seeds": "42,43,44,45,46",  # downstream seeds (the original: 5 per upstream trial)
        "epochs": 5,
        "batch_size": 64,  # the original: 8 x grad-acc 8
        "lr": 1e-4,
        "max_len": 2048,  # training rows and the sampler's context (the original's max_seq_len / max_model_len)
        "limit_train": 0,
        "limit_test": 0,
        "num_samples": 0,  # per test prompt; 0 = the original's: 16 for GSM8K, 4 for MATH
        "temperature": 0.6,
        "top_p": 0.9,
        "top_k": 50,
        "max_new_tokens": 1600,
    })


SAMPLES_PER_PROMPT = {"gsm8k": 16, "math": 4}


def checkpoints_of(f: ml_collections.ConfigDict) -> list[str]:
    return [x.strip() for x in str(f.checkpoint).split(",") if x.strip()]


def seeds_of(f: ml_collections.ConfigDict) -> list[int]:
    return [int(x) for x in str(f.seeds).split(",") if x.strip()]


def length_report(train_ex, test_ex, tok, f: ml_collections.ConfigDict) -> dict[str, int]:
    """What does not fit, counted (never cut silently): training examples longer than `max_len` tokens are cut at
    it (their completion's end, EOS included, is not learned: the original's SFTTrainer cuts the same way); test
    prompts whose prompt plus `max_new_tokens` exceed `max_len` may stop early (the original's vLLM context)."""
    too_long = sum(len(tok.encode(ex["prompt"])) + len(tok.encode(ex["completion"])) + 2 > f.max_len + 1
                   for ex in train_ex)
    over = sum(1 + len(tok.encode(ex["prompt"])) + f.max_new_tokens > f.max_len for ex in test_ex)
    return {"train_examples_truncated": int(too_long), "test_prompts_over_context": int(over)}


def run_finetune_eval(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """SFT every checkpoint with every seed, sample the test prompts, grade; mean and SE over all (checkpoint, seed)
    runs, written to run_dir/finetune_eval.json."""
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.model import artifact as model_ckpt
    f = config.finetune
    checkpoints = checkpoints_of(f)
    if not (checkpoints and f.train_path and f.test_path):
        raise ValueError("config.finetune needs checkpoint, train_path and test_path")
    tok = load_tokenizer(model_ckpt.tokenizer_path(checkpoints[0]))
    train_ex = sft_examples(f.benchmark, f.train_path, f.raw_baseline, f.limit_train)
    test_ex = sft_examples(f.benchmark, f.test_path, f.raw_baseline, f.limit_test)
    lengths = length_report(train_ex, test_ex, tok, f)
    if any(lengths.values()):
        print(f"finetune eval: {lengths['train_examples_truncated']} of {len(train_ex)} training examples are cut "
              f"at max_len={f.max_len}; {lengths['test_prompts_over_context']} of {len(test_ex)} test prompts leave "
              f"fewer than max_new_tokens={f.max_new_tokens} tokens of context")
    steps = max(1, f.epochs * len(train_ex) // f.batch_size)
    runs = {}
    for t, checkpoint in enumerate(checkpoints):
        for seed in seeds_of(f):
            name = f"seed_{seed}" if len(checkpoints) == 1 else f"trial_{t}_seed_{seed}"
            runs[name] = finetune_one(config, checkpoint, seed, name, steps, test_ex, tok)
    values = list(runs.values())
    mean = float(np.mean(values))
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    result = {"per_run": runs, "checkpoints": checkpoints, "accuracy_mean": mean, "accuracy_se": se,
              "train_examples": len(train_ex), "test_examples": len(test_ex), "steps_per_run": steps,
              "samples_per_prompt": f.num_samples or SAMPLES_PER_PROMPT[f.benchmark], **lengths}
    if len(checkpoints) == 1:
        result["per_seed"] = {k.removeprefix("seed_"): v for k, v in runs.items()}
    path = os.path.join(config.run_dir, "finetune_eval.json")
    atomic_write_text(path, json.dumps(result, indent=2))
    print(f"finetune eval: {mean:.4f} +- {se:.4f} (SE) over {len(values)} runs -> {path}")
    return result


def finetune_one(config, checkpoint: str, seed: int, name: str, steps: int, test_ex, tok) -> float:
    """One SFT run from `checkpoint` with `seed`, then the test prompts sampled and graded: the accuracy over
    (prompt x sample)."""
    from bolt_jax.config import derive, make_sampling_mesh, rules_of, runtime_overrides
    from bolt_jax.model import artifact as model_ckpt
    from bolt_jax.sampling import generate
    from bolt_jax.train.loop import train
    f = config.finetune
    n = f.num_samples or SAMPLES_PER_PROMPT[f.benchmark]
    sft_data = ml_collections.ConfigDict({"source": "sft", "seq_len": f.max_len, "sft_path": f.train_path,
                                          "sft_benchmark": f.benchmark, "sft_raw_baseline": f.raw_baseline,
                                          "sft_limit": f.limit_train,
                                          "tokenizer_path": model_ckpt.tokenizer_path(checkpoint)})
    c = derive(config, {"workflow": "train", "seed": seed, "run_dir": os.path.join(config.run_dir, name),
                        "train.steps": steps, "train.global_batch_size": f.batch_size,
                        "train.init_checkpoint": checkpoint, "train.eval_every": 0, "train.save_every": steps,
                        "optim.lr": f.lr, "optim.weight_decay": 0.0,
                        "optim.warmup_steps": max(1, round(0.05 * steps)), "data": sft_data})
    summary = train(c)
    mesh = make_sampling_mesh(config)
    model, _, _ = model_ckpt.load_model(summary["model_dir"], mesh, dtype="compute", rules=rules_of(config),
                                        **runtime_overrides(config))
    prompts = [[tok.bos_id] + tok.encode(ex["prompt"]) for ex in test_ex]
    r = generate(model, prompts, n=n, max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_p=f.top_p,
                 top_k=f.top_k, stop_token_ids=[tok.eos_id], seed=seed, mesh=mesh, tokenizer=tok.hf)
    correct = [float(is_correct(f.benchmark, r.texts[i * n + j], ex, f.raw_baseline))
               for i, ex in enumerate(test_ex) for j in range(n)]
    accuracy = float(np.mean(correct))
    print(f"finetune eval {name}: accuracy {accuracy:.4f} ({len(test_ex)} prompts x {n})")
    return accuracy
