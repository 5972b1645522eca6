"""Datasets: reading OpenAI fine-tuning JSONL (and image-label pairs) into rows, and the data gates."""
