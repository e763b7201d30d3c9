"""Evaluation: answer grading, few-shot prompts and generation evaluation with uncertainty."""
