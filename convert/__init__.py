"""Checkpoint conversion between Hugging Face Llama directories (or GGUF files) and bolt_jax model checkpoints.

    python -m convert hf-to-orbax --hf-dir DIR --out DIR [--add-bolt-tokens] [--dtype float32|bfloat16]
    python -m convert hf-to-orbax --gguf FILE --out DIR [--add-bolt-tokens] [--dtype float32|bfloat16]
    python -m convert orbax-to-hf --ckpt DIR --out DIR [--dtype float32|bfloat16]
"""
