"""bolt_jax: BoLT (Reasoning to Learn from Latent Thoughts) in JAX/Flax."""

__version__ = "0.1.0"
