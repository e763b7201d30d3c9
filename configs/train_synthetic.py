"""Train a small Llama on random tokens: a smoke test of the trainer and the base of bench/train_step.py."""

import ml_collections

from bolt_jax.config import add_dry_run, base_config, model_config_dict
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
    add_dry_run(c)  # dry_run, aot_topology, aot_chip, aot_report (bolt_jax.config.add_dry_run)
    # The E-step whose sampler an AOT dry run compiles (its shape: num_samples, chunks_per_batch, decode_slots,
    # max_prompt_len, max_new_tokens, prefix_sharing); training reads none of it
    c.estep = default_estep_config()
    return c
