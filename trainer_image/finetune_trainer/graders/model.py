"""score_model: a local model scores each sample, on CPU in float32, loaded once per compiled grader.

`model` is `builtin://models/<name>`, an absolute folder path or `file://` path holding a transformers
`save_pretrained` folder. An `s3://` model must be downloaded by the caller first
(`finetune_trainer.models.materialize`) and the grader given the local folder. Two kinds are told apart
by the folder's config:

- a reward model (architecture `*ForSequenceClassification`, `num_labels == 1`): the rendered `messages`
  are formatted with the chat template (no generation prompt) and the score is
  `low + (high - low) * sigmoid(logit)`;
- any other model is a causal-LM judge: the rendered `messages` get the chat template with a generation
  prompt, the model replies (greedy unless `sampling_params` sets temperature > 0, or top_p < 1 without a
  temperature; at most `max_completion_tokens` new tokens, default 16) and the first number in the reply,
  clamped into `range`, is the score. A reply without a number is an error for that sample.

A tokenizer without a chat template gets the messages' contents joined by blank lines. The `developer`
role is passed to the template as `system`. A prompt longer than the model's context is an error for that
sample (never truncated: a cut prompt would be judged silently wrong). Batches go through the model in
chunks of `CHUNK` rows, padded (left for generation, right for the reward head).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from finetune_api.v1alpha1.graders import ScoreModelGrader
from finetune_trainer import builtin
from finetune_trainer.graders.core import BaseGrader, GraderError, Result, check_batch, failed, scored, where
from finetune_trainer.graders.templates import MissingFieldError, compile_template

CHUNK = 32
DEFAULT_COMPLETION_TOKENS = 16
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def model_dir(uri: str, field: str) -> Path:
    if uri.startswith("s3://"):
        raise GraderError(
            f"{field}: {uri} is in S3; download it first (finetune_trainer.models.materialize) "
            "and give the grader the local folder"
        )
    try:
        directory = builtin.resolve(uri) if builtin.is_builtin(uri) else Path(uri.removeprefix("file://"))
    except builtin.BuiltinError as err:
        raise GraderError(f"{field}: {err}") from err
    if not (directory / "config.json").is_file():
        raise GraderError(
            f"{field}: {uri}: no config.json there; a model is a transformers save_pretrained folder"
        )
    return directory


class ScoreModel(BaseGrader):
    def __init__(self, spec: ScoreModelGrader) -> None:
        import torch  # noqa: PLC0415 (heavy; only model graders need it)
        from transformers import (  # noqa: PLC0415
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        self.name = spec.name
        self.low, self.high = spec.range
        if not self.low < self.high:
            raise GraderError(
                f"{where(spec.name, 'range')}: must be [low, high] with low < high, got {spec.range}"
            )
        self.threshold = spec.pass_threshold
        self.messages = [
            (
                "system" if m.role == "developer" else m.role,
                compile_template(m.content, where(spec.name, f"messages[{i}].content")),
            )
            for i, m in enumerate(spec.messages)
        ]
        params = spec.sampling_params
        self.max_new_tokens = (params and params.max_completion_tokens) or DEFAULT_COMPLETION_TOKENS
        self.temperature = params.temperature if params else None
        self.top_p = params.top_p if params else None
        self.seed = params.seed if params else None
        field = where(spec.name, "model")
        directory = model_dir(spec.model, field)
        try:
            config = AutoConfig.from_pretrained(directory)
            self.reward = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
            if self.reward and config.num_labels != 1:
                raise GraderError(
                    f"{field}: {spec.model} is a classifier with {config.num_labels} labels; a reward model "
                    "has exactly one (num_labels: 1)"
                )
            self.tokenizer: Any = AutoTokenizer.from_pretrained(directory)
            auto = AutoModelForSequenceClassification if self.reward else AutoModelForCausalLM
            self.model: Any = auto.from_pretrained(directory, dtype=torch.float32).eval()
        except (OSError, ValueError, KeyError) as err:
            if isinstance(err, GraderError):
                raise
            raise GraderError(f"{field}: cannot load {spec.model}: {err}") from err
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token is None:
                raise GraderError(f"{field}: {spec.model}'s tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.reward and self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right" if self.reward else "left"
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def grade(self, samples: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]]) -> list[Result]:
        check_batch(samples, items)
        errors: dict[int, str] = {}
        prompts: dict[int, list[int]] = {}
        for i, (sample, item) in enumerate(zip(samples, items, strict=True)):
            try:
                ids = self._encode([{"role": r, "content": t.render(sample, item)} for r, t in self.messages])
            except MissingFieldError as missing:
                errors[i] = str(missing)
                continue
            needed = len(ids) + (0 if self.reward else self.max_new_tokens)
            if self.context and needed > self.context:
                errors[i] = f"the prompt is {len(ids)} tokens; the model's context is {self.context}"
            else:
                prompts[i] = ids
        order = list(prompts)
        outcomes: dict[int, float | str] = dict(errors)
        for start in range(0, len(order), CHUNK):
            chunk = order[start : start + CHUNK]
            scores = self._rewards if self.reward else self._judge
            outcomes.update(zip(chunk, scores([prompts[i] for i in chunk]), strict=True))
        return [
            failed(o, self.threshold) if isinstance(o, str) else scored(o, self.threshold)
            for o in (outcomes[i] for i in range(len(samples)))
        ]

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        if self.templated:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=not self.reward
            )
        else:
            text = "\n\n".join(m["content"] for m in messages)
        return list(self.tokenizer(text, add_special_tokens=not self.templated)["input_ids"])

    def _rewards(self, prompts: list[list[int]]) -> list[float | str]:
        import torch  # noqa: PLC0415

        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**batch).logits[:, 0]
        return [self.low + (self.high - self.low) * float(p) for p in torch.sigmoid(logits)]

    def _judge(self, prompts: list[list[int]]) -> list[float | str]:
        import torch  # noqa: PLC0415
        from transformers import GenerationConfig  # noqa: PLC0415

        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
        if self.temperature is not None:
            sampling = self.temperature > 0.0
        else:
            sampling = self.top_p is not None and self.top_p < 1.0
        eos = self.model.generation_config.eos_token_id
        settings: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sampling,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id if eos is None else eos,
        }
        if sampling:
            settings |= {"temperature": self.temperature or 1.0, "top_p": self.top_p or 1.0, "top_k": None}
        with torch.inference_mode(), self._rng():
            out = self.model.generate(**batch, generation_config=GenerationConfig(**settings))  # type: ignore[no-untyped-call]
        replies = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [self._read_score(reply) for reply in replies]

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        """A fixed seed applies to this call only; the caller's random state is left as it was."""
        if self.seed is None:
            yield
            return
        import torch  # noqa: PLC0415

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            yield

    def _read_score(self, reply: str) -> float | str:
        match = NUMBER.search(reply)
        if match is None:
            return f"the score model's reply has no number: {reply.strip()[:200]!r}"
        return min(self.high, max(self.low, float(match.group(0))))

    def close(self) -> None:
        self.model = None
        self.tokenizer = None
