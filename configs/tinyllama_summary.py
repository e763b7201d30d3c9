"""TinyLlama-1.1B (vocab 32004 with the BoLT tokens): build it on the mesh, print shardings, time a forward."""

from bolt_jax.config import base_config, model_config_dict


def get_config():
    c = base_config()
    c.workflow = "model_summary"
    c.run_dir = "runs/tinyllama_summary"
    c.model = model_config_dict("tinyllama_1.1b_bolt")
    c.summary.seq_len = 2048
    return c
