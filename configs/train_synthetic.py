"""Train a small Llama on random tokens: a smoke test of the trainer and the base of bench/train_step.py."""

import ml_collections

from bolt_jax.config import base_config, model_config_dict
from bolt_jax.estep.run import default_estep_config
from bolt_jax.train.loop import default_train_config
from bolt_jax.train.optim import default_optim_config


def get_config(preset: str = "tiny"):
    c = base_config()
    c.workflow = "train"
    c.run_dir = "runs/train_synthetic"
    c.model = model_config_dict(preset)
    c.train = default_train_config()
    c.train.steps = 20
    c.train.save_every = 10
    c.optim = default_optim_config()
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 5
    c.data = ml_collections.ConfigDict({"source": "synthetic", "seq_len": 64, "synthetic_docs_per_row": 2})
    c.dry_run = False  # True: compile the step and print per-device memory, run nothing
    # With dry_run: compile for this topology instead of the local devices (v5e:8x8, v5p:4x4x8, h100:8, h200:4x8, up
    # to 256 chips; or cpu:N standing in for N GPUs), the E-step sampler too; memory, collectives, roofline step time
    # (bolt_jax.aot)
    c.aot_topology = ""
    c.aot_chip = ""  # cpu:N only: whose published figures predict the step time (h100, h200)
    c.aot_report = ""  # a path: the AOT report as JSON too
    # The E-step whose sampler an AOT dry run compiles (its shape: num_samples, chunks_per_batch, decode_slots,
    # max_prompt_len, max_new_tokens, prefix_sharing); training reads none of it
    c.estep = default_estep_config()
    return c
