"""What every layer may use and that knows nothing of models or data: multi-host initialization
(`distributed`), XLA flag defaults (`xla_flags`), and crash-safe file and directory writes (`atomic`)."""
