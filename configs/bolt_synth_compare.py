"""Paper experiment 1, synthetic-data method comparison (docs/original_behaviour.md): continue pretraining
TinyLlama-1.1B for 8e9 tokens on one data type. One run per DATA_TYPE:

    python -m bolt_jax.main --config configs/bolt_synth_compare.py:latent_thoughts     # also raw_repeat, raw_fresh,
                                                                                         # wrap_baseline, wrap_cot
Hardware: 4 GPUs (H100/H200 80+ GB), global batch 96 x 2048 = 196,608 tokens/step, 40,690 steps. At the 50% MFU
target (about 76k tokens/s per H100) that is about 7.3 hours; expect more until the performance issue is measured.
Inputs: the converted base model (`python -m convert hf-to-orbax --hf-dir TinyLlama_v1.1
--out checkpoints/tinyllama_bolt --add-bolt-tokens`), the splits from `prepare` and the thoughts from `synth`
(paths below; override them).
"""

from bolt_jax.config import add_dry_run, base_config, model_config_dict
from bolt_jax.data.pipeline import default_data_config
from bolt_jax.eval.periodic import default_train_eval_config
from bolt_jax.train.loop import default_train_config
from bolt_jax.train.optim import default_optim_config

DATA = {  # data type -> (dataset, latent_type)
    "latent_thoughts": ("data/finemath/warmstart_with_gpt_thoughts.jsonl", "random"),
    "raw_repeat": ("data/finemath/warmstart_with_gpt_thoughts.jsonl", "raw"),
    "raw_fresh": ("data/finemath/train", "raw"),
    "wrap_baseline": ("data/finemath/warmstart_wrap_baseline.jsonl", "pure"),
    "wrap_cot": ("data/finemath/warmstart_wrap_cot.jsonl", "pure"),
}


def get_config(data_type: str = "latent_thoughts", trial: str = "0"):
    if data_type not in DATA:
        raise ValueError(f"unknown data type {data_type!r}; choose one of {sorted(DATA)}")
    c = base_config()
    c.workflow = "train"
    c.seed = 42 + int(trial)
    c.run_dir = f"runs/synth_compare/{data_type}_trial_{trial}"
    c.model = model_config_dict("tinyllama_1.1b_bolt")  # bf16 compute, fp32 master weights
    c.data = default_data_config()
    c.data.train_path, c.data.latent_type = DATA[data_type]
    c.data.validation_path = "data/finemath/validation"
    c.data.tokenizer_path = "checkpoints/tinyllama_bolt/tokenizer"
    c.data.seq_len = 2048
    # the loader in 4 processes and a batch thread: one core packs about 280k tokens/s, 4 H100s train about 280k
    # (configs/bolt_bootstrap_fixed.py, BENCHMARKS.md)
    c.data.worker_count = 4
    c.data.prefetch_threads = 2
    c.train = default_train_config()
    c.train.init_checkpoint = "checkpoints/tinyllama_bolt"
    c.train.global_batch_size = 96
    # two micro-steps of 48 (12 sequences per GPU on 4): in one step of 96 the train step needs 61.4 GiB per H100,
    # above the 75% of its 80 GiB that jax takes by default; in two of 48, 38.2 (--config.dry_run=True
    # --config.aot_topology=h100:4, BENCHMARKS.md). On 4 H200s, --config.train.micro_batch_size=0 fits (one step).
    c.train.micro_batch_size = 48
    c.train.steps = 40_690
    c.train.eval_every = 2500
    c.train.eval_batches = 16
    c.train.save_every = 2500
    c.train.log_every = 10
    # evaluation during training, as the original: few-shot GSM8K/MATH (the synthetic variants the plots read) and
    # validation NLL every 2500 steps, the ELBO (thought-trained models) every 5000, both at the end
    c.train_eval = default_train_eval_config()
    c.train_eval.update(every=2500, elbo_every=5000, gsm8k_path="data/gsm8k/test.jsonl",
                        math_path="data/math/test.jsonl")
    c.train_eval.also_at = "500,1250"  # the original's must_eval_steps
    c.optim = default_optim_config()  # lr 1e-4, warmup 1000, cosine to 1e-6, AdamW (0.9, 0.95), wd 0.01, clip 1.0
    add_dry_run(c)  # --config.dry_run=True --config.aot_topology=h100:4: memory and roofline of its train step
    return c
