"""The sentence embedder behind text_similarity's cosine metric: all-MiniLM-L6-v2 as the image ships it
(`builtin://models/all-minilm-l6-v2`), loaded with transformers' AutoModel/AutoTokenizer on CPU in
float32. An embedding is the mean of the last hidden states over the attention mask, L2-normalised (what
sentence-transformers does for this model); texts are cut at 256 tokens, the model's training length."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune_trainer import builtin
from finetune_trainer.graders.core import GraderError

MODEL_URI = "builtin://models/all-minilm-l6-v2"
MAX_TOKENS = 256
CHUNK = 64  # texts per forward pass; a grade() batch is split only beyond this


class Embedder:
    def __init__(self, directory: Path) -> None:
        import torch  # noqa: PLC0415 (heavy; only graders that embed need it)
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415

        self.tokenizer: Any = AutoTokenizer.from_pretrained(directory)
        self.model: Any = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()

    @classmethod
    def builtin(cls, field: str) -> Embedder:
        """The image's MiniLM; a GraderError naming `field` when the model package is missing."""
        try:
            directory = builtin.resolve(MODEL_URI)
        except builtin.BuiltinError as err:
            raise GraderError(f"{field}: cosine needs the sentence-embedding model: {err}") from err
        return cls(directory)

    def embed(self, texts: Sequence[str]) -> Any:
        """One unit-length row per text (a float32 tensor of shape [len(texts), hidden])."""
        import torch  # noqa: PLC0415

        rows = []
        for start in range(0, len(texts), CHUNK):
            batch = self.tokenizer(
                list(texts[start : start + CHUNK]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(mean, dim=-1))
        if not rows:
            return torch.zeros((0, self.model.config.hidden_size))
        return torch.cat(rows)

    def cosine(self, inputs: Sequence[str], references: Sequence[str]) -> list[float]:
        """cos(inputs[i], references[i]), both sides embedded together."""
        if not inputs:
            return []
        vectors = self.embed([*inputs, *references])
        left, right = vectors[: len(inputs)], vectors[len(inputs) :]
        return [max(-1.0, min(1.0, float(v))) for v in (left * right).sum(dim=-1)]

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
