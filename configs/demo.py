"""`make demo`: raw vs thought-augmented training of a small Llama on the toy math corpus, on CPU in minutes."""

import ml_collections

from bolt_jax.config import base_config, model_config_dict
from bolt_jax.data.pipeline import default_data_config
from bolt_jax.train.loop import default_train_config
from bolt_jax.train.optim import default_optim_config


def get_config():
    c = base_config()
    c.workflow = "demo"
    c.run_dir = "runs/demo"
    c.seed = 0
    c.model = model_config_dict("tiny", vocab_size=512, hidden_size=128, intermediate_size=344,
                                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                compute_dtype="float32")
    c.data = default_data_config()
    c.data.seq_len = 256
    c.data.packing = "document"
    c.data.shuffle_documents = True
    c.train = default_train_config()
    c.train.steps = 200
    c.train.global_batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 40
    c.train.eval_batches = 4
    c.train.save_every = 100
    c.optim = default_optim_config()
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 30
    c.optim.lr_min_ratio = 0.1
    c.demo = ml_collections.ConfigDict({"num_train_docs": 4000, "num_validation_docs": 200})
    return c
