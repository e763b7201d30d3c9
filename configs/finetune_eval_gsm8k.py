"""Finetune-based evaluation on GSM8K (as the original): SFT from a checkpoint on completions, sample, grade,
over seeds.

    python -m bolt_jax.main --config configs/finetune_eval_gsm8k.py --config.finetune.checkpoint=runs/x/model \
        --config.finetune.train_path=data/gsm8k/train.jsonl --config.finetune.test_path=data/gsm8k/test.jsonl
"""

import ml_collections

from bolt_jax.config import base_config, model_config_dict
from bolt_jax.train.loop import default_train_config
from bolt_jax.train.optim import default_optim_config
from bolt_jax.workflows.finetune import default_finetune_config


def get_config():
    c = base_config()
    c.workflow = "finetune_eval"
    c.run_dir = "runs/finetune_eval"
    c.model = model_config_dict("tinyllama_1.1b_bolt")
    c.finetune = default_finetune_config()
    c.train = default_train_config()
    c.train.global_batch_size = 64
    c.optim = default_optim_config()
    c.data = ml_collections.ConfigDict({"source": "sft", "seq_len": 512})
    return c
