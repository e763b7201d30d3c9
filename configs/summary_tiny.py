"""A tiny Llama on the mesh: print every parameter with its sharding and time a forward pass (no data needed)."""

from bolt_jax.config import base_config, model_config_dict


def get_config():
    c = base_config()
    c.workflow = "model_summary"
    c.run_dir = "runs/summary_tiny"
    c.model = model_config_dict("tiny")
    return c
