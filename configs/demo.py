"""`make demo`: the whole BoLT EM loop on the toy math corpus, on CPU in minutes.

Tiny base model pretrained on raw toy text -> warmstart on a small set with the guessing teacher's thoughts -> 3 EM
iterations with K=4 on a raw corpus 4x as large -> raw token- and FLOP-matched baselines -> report
(bolt_jax.workflows.report: E-step thought correctness, held-out accuracy, -ELBO / NLL per token, posterior
diagnostics, the demo's claims).

As in the paper (warmstart 0.8e9 tokens, each M-step 13e9), the warmstart is a short run on the small set and every
M-step a longer one on the bootstrap corpus: here 150 warmstart steps (enough for the format and the familiar steps
on every seed tried) and 200 per M-step, each M-step from the base model. The warmstart teacher guesses the new
operations' facts (bolt_jax.data.toy), so what EM has to find is known and the report can say how much of it each
iteration found. `--config.workflow=compare` runs the simpler raw-vs-thoughts comparison instead.
"""

import ml_collections

from bolt_jax.config import base_config, model_config_dict
from bolt_jax.data.pipeline import default_data_config
from bolt_jax.estep.run import default_estep_config
from bolt_jax.train.loop import default_train_config
from bolt_jax.train.optim import default_optim_config
from bolt_jax.workflows.bootstrap import default_bootstrap_config


def get_config():
    c = base_config()
    c.workflow = "demo"
    c.run_dir = "runs/demo"
    c.seed = 0
    c.model = model_config_dict("tiny", vocab_size=128, hidden_size=128, intermediate_size=344,
                                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                compute_dtype="float32", max_position_embeddings=512)
    c.data = default_data_config()
    c.data.seq_len = 256
    c.data.packing = "document"
    c.data.shuffle_documents = True
    c.train = default_train_config()
    c.train.steps = 200  # the `compare` workflow; the bootstrap stages set their own
    c.train.global_batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 20
    c.train.eval_batches = 2
    c.train.save_every = 50
    c.optim = default_optim_config()
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 10
    c.optim.lr_min_ratio = 0.1
    c.bootstrap = default_bootstrap_config()
    c.bootstrap.update(iterations=3, pretrain_steps=300, warmstart_steps=150, iteration_steps=200, elbo_samples=4,
                       elbo_docs=40, toy_eval_problems=200)
    c.estep = default_estep_config()
    # a toy document is a question paragraph and an answer paragraph: one chunk per paragraph
    c.estep.update(num_samples=4, max_new_tokens=32, max_prompt_len=256, max_tokens=512, split_mode="paragraph",
                   random_chunking=False, units_per_chunk=1, chunks_per_batch=128,
                   # toy thoughts are at most 32 tokens and nearly equally long: one static batch per call wastes
                   # little, and the demo's 10-minute budget was measured with it (the E-step default is continuous)
                   scheduler="static")
    c.demo = ml_collections.ConfigDict({"num_train_docs": 4000, "num_validation_docs": 200,  # compare
                                        "num_pretrain_docs": 3000, "num_warmstart_docs": 200,
                                        "num_bootstrap_docs": 800, "data_dir": ""})
    return c
