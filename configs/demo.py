"""CPU demo: a tiny Llama on 8 simulated devices (the trainer issue turns this into the full EM demo)."""

from bolt_jax.config import base_config, model_config_dict


def get_config():
    c = base_config()
    c.workflow = "model_summary"
    c.run_dir = "runs/demo"
    c.model = model_config_dict("tiny")
    # default mesh: every device on fsdp; try --config.mesh.data=2 --config.mesh.tensor=2 with 8 devices
    return c
