"""Evaluation of a model on rows: batched generation and the task metrics computed from it."""
