"""M-step trainer: optimizer and schedule, jitted step with accumulation, Orbax checkpoints, metrics, loop."""
