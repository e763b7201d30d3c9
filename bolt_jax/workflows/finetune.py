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
        "checkpoint": "",  # the pretrained model to finetune
        "benchmark": "gsm8k",  # gsm8k ({question, answer}) | math ({problem, solution})
        "train_path": "",  # JSONL (or Parquet / TFDS source) for SFT
        "test_path": "",
        "raw_baseline": False,  # delimiter <SoL> only, <EoL> removed (models trained without thoughts)
        "seeds": "42,43,44",  # downstream seeds (the original: 5 per upstream trial)
        "epochs": 5,
        "batch_size": 64,  # the original: 8 x grad-acc 8
        "lr": 1e-4,
        "max_len": 512,
        "limit_train": 0,
        "limit_test": 0,
        "num_samples": 16,  # per test prompt (the original: 16 for GSM8K, 4 for MATH)
        "temperature": 0.6,
        "top_p": 0.9,
        "top_k": 50,
        "max_new_tokens": 512,
    })


def run_finetune_eval(config: ml_collections.ConfigDict) -> dict[str, Any]:
    from bolt_jax import parallel
    from bolt_jax.config import derive, rules_of, runtime_overrides
    from bolt_jax.data.tokenizer import load_tokenizer
    from bolt_jax.model import artifact as model_ckpt
    from bolt_jax.sampling import generate
    from bolt_jax.train.loop import train
    f = config.finetune
    if not (f.checkpoint and f.train_path and f.test_path):
        raise ValueError("config.finetune needs checkpoint, train_path and test_path")
    tok = load_tokenizer(model_ckpt.tokenizer_path(f.checkpoint))
    train_ex = sft_examples(f.benchmark, f.train_path, f.raw_baseline, f.limit_train)
    test_ex = sft_examples(f.benchmark, f.test_path, f.raw_baseline, f.limit_test)
    steps = max(1, f.epochs * len(train_ex) // f.batch_size)
    per_seed = {}
    for seed in [int(s) for s in str(f.seeds).split(",") if s.strip()]:
        sft_data = ml_collections.ConfigDict({"source": "sft", "seq_len": f.max_len, "sft_path": f.train_path,
                                              "sft_benchmark": f.benchmark, "sft_raw_baseline": f.raw_baseline,
                                              "sft_limit": f.limit_train,
                                              "tokenizer_path": model_ckpt.tokenizer_path(f.checkpoint)})
        c = derive(config, {"workflow": "train", "seed": seed, "run_dir": os.path.join(config.run_dir, f"seed_{seed}"),
                            "train.steps": steps, "train.global_batch_size": f.batch_size,
                            "train.init_checkpoint": f.checkpoint, "train.eval_every": 0, "train.save_every": steps,
                            "optim.lr": f.lr, "optim.weight_decay": 0.0,
                            "optim.warmup_steps": max(1, round(0.05 * steps)), "data": sft_data})
        summary = train(c)
        mesh = parallel.make_mesh(dict(config.mesh))
        model, _, _ = model_ckpt.load_model(summary["model_dir"], mesh, rules=rules_of(config),
                                            **runtime_overrides(config))
        prompts = [[tok.bos_id] + tok.encode(ex["prompt"]) for ex in test_ex]
        r = generate(model, prompts, n=f.num_samples, max_new_tokens=f.max_new_tokens, temperature=f.temperature,
                     top_p=f.top_p, top_k=f.top_k, stop_token_ids=[tok.eos_id], seed=seed, mesh=mesh,
                     tokenizer=tok.hf)
        correct = []
        for i, ex in enumerate(test_ex):
            for j in range(f.num_samples):
                text = r.texts[i * f.num_samples + j]
                correct.append(float(is_correct(f.benchmark, text, ex, f.raw_baseline)))
        per_seed[seed] = float(np.mean(correct))
        print(f"finetune eval seed {seed}: accuracy {per_seed[seed]:.4f} ({len(test_ex)} prompts x {f.num_samples})")
    values = list(per_seed.values())
    mean = float(np.mean(values))
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    result = {"per_seed": per_seed, "accuracy_mean": mean, "accuracy_se": se, "train_examples": len(train_ex),
              "test_examples": len(test_ex), "steps_per_seed": steps}
    atomic_write_text(os.path.join(config.run_dir, "finetune_eval.json"), json.dumps(result, indent=2))
    print(f"finetune eval: {mean:.4f} +- {se:.4f} over {len(values)} seeds")
    return result
