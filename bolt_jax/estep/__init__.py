"""E-step: posterior sampling, joint scoring, importance resampling, ELBO, result store, merge."""
