"""Vision suites for `evaluate`: a vision job's suite rows, its checkpoint or baseline loaded as the kind of
model the job trains (`vision.task`), and what that model says on the rows, in batches.

- image_classification: suite rows are image_label rows (`{"image", "label"}`). The model is an
  AutoModelForImageClassification: the checkpoint itself (full fine-tuning), or the base model with the
  adapter and the head and class names saved beside it (LoRA, `methods.vision`). Images go through the
  checkpoint's image processor (sized as training sized it). A row's reply is the class name the model
  predicts, so `exact_match` is classification accuracy with a 0/1 score per row; `eval_loss` is the
  cross-entropy of the row's label; graders and judges read the predicted name as the reply.
- chat: suite rows are chat rows whose messages hold image parts. The model is an
  AutoModelForImageTextToText with its processor; a prompt goes through the processor's chat template
  with the row's images, and replies are generated in batches as for text rows (greedy at temperature 0,
  seeded sampling otherwise, `generation.decoding`); `eval_loss` is not computed for these rows.

The baseline loads the same way from the model `plan.baseline` chose (the job's base model by default), its
processor sized by `vision.imageSize`/`maxImageTokens` as training sized the base's. A classifier is
compared only with a baseline whose classes include every label of the suite: a base model's own head (an
ImageNet one, say) predicts other classes, so its score there would measure the label names, not the
images. Otherwise `NotComparableError` fails the suite's no-regression check, saying to set
`baseline.source: Model` (a classifier of these classes) or to leave the suite out of `noRegression.suites`.

Images are read by `data.images.ImageReader` (data URLs, s3://, files; http(s) refused). Each is decoded
once when the suite is prepared, so a bad one fails its suite naming the row (`suite <name> line <n>:
image <k>`) before any model loads; then they are read batch by batch, never all held in memory. This
module must not score or decide: that stays `suites`' and `finetune_api.gate`'s.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from finetune_api.trainer_config import EvaluateContract
from finetune_api.v1alpha1.evalgate import Metric, Suite
from finetune_api.v1alpha1.finetunejob import VisionSettings
from finetune_trainer.data.images import ImageReader, shown, sized
from finetune_trainer.data.rows import Row
from finetune_trainer.evaluation.generation import decoding, eos_ids, new_tokens, seeded
from finetune_trainer.evaluation.prepared import NotComparableError, Prepared, prompt_of
from finetune_trainer.methods.vision import vlm_messages, vlm_processor
from finetune_trainer.storage import Store

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
CLASSIFICATION = "image_classification"


def prepare(suite: Suite, rows: list[Row], task: str, store: Store) -> Prepared:
    """The suite's rows as a vision job's: every image decoded once here, so a bad one names its row."""
    where = f"suite {suite.name}"
    prompts: list[Any] = []
    references: list[str | None] = []
    items: list[dict[str, Any]] = []
    images: list[list[str]] = []
    for row in rows:
        data = row.data
        if task == CLASSIFICATION:
            if not isinstance(data.get("image"), str) or not isinstance(data.get("label"), str):
                raise ValueError(
                    f"{where} line {row.line}: vision.task image_classification is scored on image_label "
                    'rows ({"image": ..., "label": ...})'
                )
            prompts.append(shown(data["image"]))
            references.append(data["label"])
            items.append(
                {k: v for k, v in data.items() if k != "image"} | {"reference_answer": data["label"]}
            )
            images.append([data["image"]])
            continue
        if "messages" not in data or not row.images:
            raise ValueError(
                f"{where} line {row.line}: vision.task chat is scored on chat rows with image_url parts; "
                "image_label rows need vision.task image_classification"
            )
        _, reference, item = prompt_of(data)
        messages = data["messages"]
        asked = messages[:-1] if messages[-1].get("role") == "assistant" else messages
        shown_images = sum(
            isinstance(part, dict) and part.get("type") == "image_url"
            for message in asked
            if isinstance(message.get("content"), list)
            for part in message["content"]
        )
        prompts.append(vlm_messages(asked))
        references.append(reference)
        items.append(item)
        images.append(list(row.images[:shown_images]))
    reader = ImageReader(store)
    for row, uris in zip(rows, images, strict=True):
        for image in reader.load_all(uris, split=where, line=row.line):
            image.close()
    return Prepared(suite, prompts, references, items, images=images, lines=[row.line for row in rows])


def load(config: EvaluateContract, model_dir: Path, adapter: Path | None, store: Store) -> Classifier | Chat:
    """The baseline (`adapter` None: the model in `model_dir`) or the candidate (the checkpoint in `adapter`,
    a whole model or an adapter over `model_dir`), as the job's `vision.task` model."""
    settings = config.vision or VisionSettings()
    baseline = adapter is None
    checkpoint = adapter
    if adapter is not None and not (adapter / "adapter_config.json").exists():
        model_dir, adapter = adapter, None  # a full fine-tune: the checkpoint is the model
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if torch.cuda.is_available() else torch.float32}
    with_processor = checkpoint is not None and any((checkpoint / f).exists() for f in PROCESSOR_FILES)
    reader = ImageReader(store)
    if settings.task == CLASSIFICATION:
        if adapter is not None:  # the new head's size and class names are in the config beside the adapter
            kwargs |= {"config": AutoConfig.from_pretrained(adapter), "ignore_mismatched_sizes": True}
        model = _merged(AutoModelForImageClassification.from_pretrained(model_dir, **kwargs), adapter)
        if with_processor:
            image_processor = AutoImageProcessor.from_pretrained(checkpoint)  # type: ignore[no-untyped-call]
        else:
            image_processor = sized(
                AutoImageProcessor.from_pretrained(model_dir),  # type: ignore[no-untyped-call]
                side=settings.image_size,
            )
        source = config.evaluation.baseline.uri if baseline else config.evaluation.checkpoint_uri
        return Classifier(model, image_processor, reader, source, baseline=baseline)
    model = _merged(AutoModelForImageTextToText.from_pretrained(model_dir, **kwargs), adapter)
    if with_processor:
        processor = AutoProcessor.from_pretrained(checkpoint)  # type: ignore[no-untyped-call]
    else:
        processor = vlm_processor(model_dir, settings)
    return Chat(model, processor, reader)


def _merged(model: Any, adapter: Path | None) -> Any:
    if adapter is not None:
        from peft import PeftModel  # noqa: PLC0415

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


def _batches(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


@dataclass
class Classifier:
    """An image classifier and its image processor: replies are predicted class names."""

    model: Any
    image_processor: Any
    reader: ImageReader
    source: str  # the model's URI, as messages name it
    baseline: bool

    def say(self, prepared: Prepared, seed: int | None) -> list[Any]:
        suite = prepared.suite
        classes = {int(i): str(label) for i, label in self.model.config.id2label.items()}
        ids = {label: i for i, label in classes.items()}
        if self.baseline:
            self._check_covers(suite, prepared.references, ids)
        interpolate = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        said: list[Any] = []
        for rows in _batches(len(prepared.prompts), suite.generation.batch_size):
            images = [
                self.reader.load(prepared.images[i][0], split=f"suite {suite.name}", line=prepared.lines[i])
                for i in rows
            ]
            inputs = dict(self.image_processor(images=images, return_tensors="pt"))
            pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
            extra: dict[str, Any] = {}
            if interpolate and pixels.shape[-1] != getattr(self.model.config, "image_size", pixels.shape[-1]):
                extra["interpolate_pos_encoding"] = True  # imageSize other than the model's, as trained
            with torch.inference_mode():
                logits = self.model(pixel_values=pixels, **extra).logits.float()
            if suite.metric != Metric.EVAL_LOSS:
                said += [classes[int(k)] for k in logits.argmax(-1)]
                continue
            for i, log_probs in zip(rows, logits.log_softmax(-1), strict=True):
                label = prepared.references[i]
                if label not in ids:
                    raise ValueError(
                        f"suite {suite.name} line {prepared.lines[i]}: label {label!r} is not one of the "
                        f"model's classes, so it has no loss"
                    )
                said.append(-float(log_probs[ids[label]]))
        return said

    def _check_covers(self, suite: Suite, labels: list[str | None], ids: dict[str, int]) -> None:
        missing = sorted({label for label in labels if label is not None and label not in ids})
        if not missing:
            return
        known = sorted(ids)
        listed = known if len(known) <= 8 else [*known[:8], f"... {len(known)} in all"]
        raise NotComparableError(
            f"the baseline {self.source} predicts the classes {listed}, not the suite's labels "
            f"{missing[:8]}: an image classifier is compared only with a baseline that can predict every "
            f"label of the suite. Set the EvalGate's baseline.source: Model to a classifier of these "
            f"classes, or leave suite {suite.name} out of noRegression.suites"
        )


@dataclass
class Chat:
    """A vision-language model and its processor: replies generated from each row's messages and images."""

    model: Any
    processor: Any
    reader: ImageReader

    def say(self, prepared: Prepared, seed: int | None) -> list[Any]:
        suite, settings = prepared.suite, prepared.suite.generation
        if suite.metric == Metric.EVAL_LOSS:
            raise ValueError(
                "eval_loss is not computed on vision chat rows; use exact_match, grader_score or win_rate"
            )
        tokenizer = self.processor.tokenizer
        texts = [
            self.processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prepared.prompts
        ]
        stops = eos_ids(self.model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths share a batch
        replies = [""] * len(texts)
        with seeded(self.model, seed if settings.temperature > 0 else None):
            for rows in _batches(len(order), settings.batch_size):
                chunk = [order[k] for k in rows]
                images = [
                    self.reader.load_all(
                        prepared.images[i], split=f"suite {suite.name}", line=prepared.lines[i]
                    )
                    for i in chunk
                ]
                inputs = self.processor(
                    text=[texts[i] for i in chunk],
                    images=images if any(images) else None,
                    padding=True,
                    padding_side="left",  # every row's prompt ends at the same position
                    return_tensors="pt",
                ).to(self.model.device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
                with torch.inference_mode():
                    out = self.model.generate(**inputs, generation_config=decoding(settings, pad, stops))
                width = inputs["input_ids"].shape[1]
                for i, tokens in zip(chunk, new_tokens(out[:, width:].tolist(), stops), strict=True):
                    replies[i] = tokenizer.decode(tokens, skip_special_tokens=True)
        return replies
