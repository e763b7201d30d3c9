"""Thought synthesis with an API model (OpenAI sync and Batch APIs): prompts, cache, budget, ledger."""
