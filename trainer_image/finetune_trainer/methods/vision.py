"""Vision: image classification on a transformers Trainer, or image+text chat SFT on TRL's VLM path.

`vision.task: image_classification` trains `AutoModelForImageClassification` on `image_label` rows. The
classes are `vision.labels`, else the sorted labels of the training rows; a row whose label is not one of
them fails naming its line. The base model's own head (an ImageNet one, say) is replaced by a head for
those classes (`ignore_mismatched_sizes`); LoRA trains that new head whole (`modules_to_save`) and writes
the model config (class names) beside each adapter checkpoint. The collator reads and processes each
batch's images; evaluation reports `eval_accuracy` beside `eval_loss`.

`vision.task: chat` trains `AutoModelForImageTextToText` with its `AutoProcessor` through TRL's SFTTrainer,
which processes images per batch (a dataset transform reads them). The loss is on what the assistant says
only: TRL's `assistant_only_loss` when the processor's chat template marks assistant turns (`{% generation
%}`, or a template TRL can patch) and no assistant turn has `weight: 0`; otherwise each row is trained as a
prompt and a completion (its one learned assistant turn) with `completion_only_loss`, and a row with more
than one learned turn is refused.

Inline images are decoded before training starts, stored ones as their batch is built; a bad image names
its line either way. `vision.imageSize`/`maxImageTokens` are applied to the image processor
(`data.images.sized`); a classifier whose position embeddings can interpolate takes any imageSize, a VLM's
vision tower must take the size it gets. Checkpoints carry the (resized) processor. Resuming needs nothing
from here: a checkpoint holds the weights (or adapter and head), optimizer state and processor, and the
images are read again from the rows.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoProcessor,
    EvalPrediction,
    PretrainedConfig,
    ProcessorMixin,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import get_training_chat_template

from finetune_api.v1alpha1.finetunejob import VisionSettings
from finetune_trainer.data.images import ImageReader, image_tokens, pixel_budget, sized
from finetune_trainer.data.rows import Row
from finetune_trainer.methods import Run
from finetune_trainer.models import load_kwargs, peft_config
from finetune_trainer.storage import Store


class VisionError(ValueError):
    pass


def build(run: Run) -> Trainer:
    settings = run.config.vision or VisionSettings()
    reader = ImageReader(Store.for_target(run.config.storage))
    splits = {"training": run.train_rows, "validation": run.eval_rows}
    for split, rows in splits.items():
        reader.check(rows, split=split)
    if settings.task == "image_classification":
        return classifier(run, settings, reader, splits)
    return chat(run, settings, reader, splits)


# image_classification


def label_set(settings: VisionSettings, splits: dict[str, list[Row]]) -> list[str]:
    """The classes, in id order; every row's label must be one of them."""
    for split, rows in splits.items():
        for row in rows:
            if not isinstance(row.data.get("image"), str) or not isinstance(row.data.get("label"), str):
                raise VisionError(
                    f"{split} line {row.line}: vision.task image_classification trains on image_label rows "
                    '({"image": ..., "label": ...})'
                )
    if settings.labels:
        labels, origin = list(settings.labels), "vision.labels"
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise VisionError(f"vision.labels: {duplicates} listed more than once")
    else:
        labels, origin = sorted({row.data["label"] for row in splits["training"]}), "the training labels"
        if len(labels) < 2:
            raise VisionError(
                f"image_classification needs two classes or more; the training rows have {labels}"
            )
    known = set(labels)
    for split, rows in splits.items():
        for row in rows:
            if row.data["label"] not in known:
                listed = labels if len(labels) <= 20 else [*labels[:20], "..."]
                raise VisionError(
                    f"{split} line {row.line}: label {row.data['label']!r} is not one of {origin} {listed}"
                )
    return labels


def classification_heads(model: torch.nn.Module, num_labels: int) -> list[str]:
    """Top-level modules outside the backbone with one output per class (`classifier`, `head`, ...)."""
    backbone = getattr(model, "base_model_prefix", "")
    heads = [
        name
        for name, child in model.named_children()
        if name != backbone
        and any(isinstance(m, torch.nn.Linear) and m.out_features == num_labels for m in child.modules())
    ]
    if not heads:
        raise VisionError(
            f"cannot find the classification head of {type(model).__name__}: no layer outside the backbone "
            f"has {num_labels} outputs"
        )
    return heads


@dataclass(frozen=True)
class ImageLabelCollator:
    """Rows {image, label, line, split} -> pixel_values and labels, reading images as batches are built."""

    reader: ImageReader
    image_processor: Any
    interpolate: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        images = [self.reader.load(r["image"], split=r["split"], line=r["line"]) for r in rows]
        batch: dict[str, Any] = dict(self.image_processor(images=images, return_tensors="pt"))
        batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        if self.interpolate:
            batch["interpolate_pos_encoding"] = True
        return batch


class SaveModelConfig(TrainerCallback):
    """An adapter checkpoint holds no model config, yet the new head's size and class names live there:
    write it beside the adapter, so the checkpoint says how to rebuild the model it adapts."""

    def __init__(self, config: PretrainedConfig) -> None:
        self.config = config

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.is_world_process_zero:
            self.config.save_pretrained(Path(args.output_dir) / f"checkpoint-{state.global_step}")


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def classifier(
    run: Run, settings: VisionSettings, reader: ImageReader, splits: dict[str, list[Row]]
) -> Trainer:
    if settings.max_image_tokens is not None:
        raise VisionError("vision.maxImageTokens applies to task chat; a classifier makes no image tokens")
    labels = label_set(settings, splits)
    ids = {label: i for i, label in enumerate(labels)}
    image_processor = AutoImageProcessor.from_pretrained(run.model_dir)  # type: ignore[no-untyped-call]
    image_processor = sized(image_processor, side=settings.image_size)
    model = AutoModelForImageClassification.from_pretrained(
        run.model_dir,
        id2label=dict(enumerate(labels)),
        label2id=ids,
        ignore_mismatched_sizes=True,  # the base model's head has its own classes: a new one replaces it
        **load_kwargs(run.config.adapter, gpu=run.gpu),
    )
    interpolate = bool(
        settings.image_size
        and settings.image_size != getattr(model.config, "image_size", None)
        and "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    )
    callbacks = list(run.callbacks)
    lora = peft_config(run.config.adapter)
    if lora is not None:
        from peft import get_peft_model  # noqa: PLC0415

        heads = classification_heads(model, len(labels))
        lora.task_type = None  # PEFT has no image-classification task: the head is trained and saved whole
        lora.modules_to_save = heads
        lora.exclude_modules = heads
        model = get_peft_model(model, lora)
        callbacks.insert(0, SaveModelConfig(model.config))  # before the staging upload reads the folder
    datasets = {
        split: Dataset.from_list(
            [
                {
                    "image": row.data["image"],
                    "label": ids[row.data["label"]],
                    "line": row.line,
                    "split": split,
                }
                for row in rows
            ]
        )
        for split, rows in splits.items()
        if rows
    }
    args = TrainingArguments(
        **run.common_args()
        | {
            "remove_unused_columns": False,  # the collator reads the images from the rows
            "label_names": ["labels"],
            "include_num_input_tokens_seen": "no",  # it would count pixels
        }
    )
    return Trainer(
        model=model,
        args=args,
        data_collator=ImageLabelCollator(reader, image_processor, interpolate),
        train_dataset=datasets["training"],
        eval_dataset=datasets.get("validation"),
        processing_class=image_processor,
        compute_metrics=accuracy,
        callbacks=callbacks,
    )


# chat


def marks_assistant_turns(processor: ProcessorMixin) -> bool:
    """Whether TRL can mask all but the assistant turns with this processor's chat template."""
    try:
        get_training_chat_template(processor)
    except ValueError:
        return False
    return True


def learned_turns(row: Row) -> list[int]:
    messages = row.data["messages"]
    return [i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("weight") != 0]


def vlm_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as processors take them: image parts become `{"type": "image"}` placeholders that
    TRL fills with the row's images in order; `weight` goes; `developer` is a system prompt."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        elif isinstance(content, list):
            content = [
                {"type": "image"} if part["type"] == "image_url" else {"type": "text", "text": part["text"]}
                for part in content
            ]
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({k: v for k, v in message.items() if k != "weight"} | {"role": role, "content": content})
    return out


def chat_example(row: Row, split: str, *, why_split: str | None) -> dict[str, Any]:
    """A dataset row: messages (or prompt and completion, when `why_split` says why) as JSON, image URIs."""
    messages = row.data["messages"]
    learned = learned_turns(row)
    if not learned:
        raise VisionError(f"{split} line {row.line}: every assistant turn has weight 0; nothing to learn")
    example: dict[str, Any] = {"images": list(row.images), "line": row.line}
    if why_split is None:
        return example | {"messages": json.dumps(vlm_messages(messages))}
    if len(learned) > 1:
        raise VisionError(
            f"{split} line {row.line}: {len(learned)} assistant turns to learn, but {why_split}, so each "
            "row is trained as a prompt and one completion; give earlier assistant turns weight 0 or split "
            "the row"
        )
    turn = learned[0]
    content = messages[turn].get("content")
    if isinstance(content, list) and any(part.get("type") == "image_url" for part in content):
        raise VisionError(f"{split} line {row.line}: the assistant turn to learn holds an image")
    return example | {
        "prompt": json.dumps(vlm_messages(messages[:turn])),
        "completion": json.dumps(vlm_messages(messages[turn : turn + 1])),
    }


@dataclass(frozen=True)
class DecodeRows:
    """Dataset transform: JSON messages back to lists, image URIs to images, as TRL's collator takes them."""

    reader: ImageReader
    split: str

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        keys = ("messages", "prompt", "completion")
        out: dict[str, list[Any]] = {k: [json.loads(v) for v in batch[k]] for k in keys if k in batch}
        out["images"] = [
            self.reader.load_all(uris, split=self.split, line=line)
            for uris, line in zip(batch["images"], batch["line"], strict=True)
        ]
        return out


def vlm_processor(model_dir: Path, settings: VisionSettings) -> ProcessorMixin:
    """The model's processor, its image processor sized; fails when the model cannot take the settings."""
    processor = AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    if not isinstance(processor, ProcessorMixin) or not hasattr(processor, "image_processor"):
        raise VisionError(
            f"{model_dir}: no image processor saved with the model; vision.task chat needs a "
            "vision-language model and its processor"
        )
    if not processor.chat_template:
        raise VisionError(f"{model_dir}: the processor has no chat template to render conversations with")
    if not pixel_budget(processor.image_processor):
        vision_config = getattr(AutoConfig.from_pretrained(model_dir), "vision_config", None)
        tower = getattr(vision_config, "image_size", None)
        side, most = settings.image_size, settings.max_image_tokens
        if side and tower and side != tower:
            raise VisionError(
                f"vision.imageSize {side}: this model's vision tower takes {tower}x{tower} images; "
                "leave imageSize unset"
            )
        if most is not None and (tokens := image_tokens(processor)) > most:
            raise VisionError(
                f"vision.maxImageTokens {most}: {type(processor).__name__} turns an image into up to "
                f"{tokens} tokens and has no setting to lower that; raise maxImageTokens or leave it unset"
            )
    processor.image_processor = sized(
        processor.image_processor, side=settings.image_size, most_tokens=settings.max_image_tokens
    )
    return processor


def chat(run: Run, settings: VisionSettings, reader: ImageReader, splits: dict[str, list[Row]]) -> SFTTrainer:
    for split, rows in splits.items():
        for row in rows:
            if not row.images or "messages" not in row.data:
                raise VisionError(
                    f"{split} line {row.line}: vision.task chat trains on vision_chat rows (messages with "
                    "image_url parts); image_label rows need vision.task image_classification"
                )
    processor = vlm_processor(run.model_dir, settings)
    why_split = None
    if not marks_assistant_turns(processor):
        why_split = "the model's chat template does not mark assistant turns ({% generation %})"
    elif any(
        len(learned_turns(row)) < sum(m.get("role") == "assistant" for m in row.data["messages"])
        for rows in splits.values()
        for row in rows
    ):
        why_split = "the dataset has assistant turns with weight 0"
    datasets = {
        split: Dataset.from_list(
            [chat_example(row, split, why_split=why_split) for row in rows]
        ).with_transform(DecodeRows(reader, split))
        for split, rows in splits.items()
        if rows
    }
    model = AutoModelForImageTextToText.from_pretrained(
        run.model_dir, **load_kwargs(run.config.adapter, gpu=run.gpu)
    )
    args = SFTConfig(
        **run.common_args(),
        max_length=run.hp.max_seq_length,
        assistant_only_loss=why_split is None,
        completion_only_loss=why_split is not None,
        remove_unused_columns=False,  # the transform turns the image URIs into images
        dataset_num_proc=None,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets["training"],
        eval_dataset=datasets.get("validation"),
        processing_class=processor,
        peft_config=peft_config(run.config.adapter),
        callbacks=run.callbacks,
    )
