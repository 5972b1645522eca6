"""The vision method on tiny models: a ViT tells red squares from blue ones (full and LoRA), a tiny Llava
learns what the assistant says about an image, and bad images or labels fail naming their line."""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from finetune_api.hyperparameters import Resolved
from finetune_api.plan import RunPlan
from finetune_api.trainer_config import StorageTarget, TrainContract
from finetune_api.v1alpha1 import FineTuneJob
from finetune_trainer import train
from finetune_trainer.data.images import ImageError, SizingError, sized
from finetune_trainer.data.rows import read_jsonl
from finetune_trainer.methods import Run
from finetune_trainer.methods.vision import VisionError, build
from helpers.tinymodels import IMAGE_TOKEN, image_classifier, vision_language_model
from helpers.visiondata import COLORS, QUESTION, chat_rows, label_rows, png_url


def contract(
    model: Path, tmp: Path, vision: dict[str, Any], *, adapter: str, epochs: int, lr: float
) -> TrainContract:
    job = FineTuneJob.model_validate(
        {
            "metadata": {"name": "vision", "namespace": "test", "uid": str(uuid.uuid4())},
            "spec": {
                "method": "vision",
                "baseModel": {"uri": str(model)},
                "datasets": {
                    "training": {"uri": str(tmp / "train.jsonl")},
                    "validation": {"uri": str(tmp / "v")},
                },
                "adapter": {"type": adapter},
                "vision": vision,
                "checkpointing": {"saveSteps": 1000},
                "storage": {"bucket": "unused"},
            },
        }
    )
    config = RunPlan.of(job, run="v-1").train_contract(
        Resolved(epochs=epochs, batch_size=8, learning_rate=lr)
    )
    return config.model_copy(update={"storage": StorageTarget(staging_uri=f"{tmp}/staging/")})


def run_of(
    config: TrainContract, model: Path, tmp: Path, train: list[dict[str, Any]], val: list[dict[str, Any]]
) -> Run:
    def rows(name: str, data: list[dict[str, Any]]) -> Any:
        dataset = read_jsonl(name, "".join(json.dumps(r) + "\n" for r in data).encode())
        assert not dataset.problems, dataset.problems
        return dataset.rows

    return Run(config, model, tmp / "out", rows("train", train), rows("val", val) if val else [], gpu=False)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in before if name in after and not torch.equal(before[name], after[name])}


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_classifier(tmp_path_factory.mktemp("vit") / "model")


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = [QUESTION, "You describe images.", "It is red.", "It is blue.", "hello world"] * 20
    return vision_language_model(tmp_path_factory.mktemp("llava") / "model", corpus)


def test_full_fine_tuning_tells_red_from_blue_and_the_checkpoint_classifies(
    vit: Path, tmp_path: Path
) -> None:
    config = contract(vit, tmp_path, {"task": "image_classification"}, adapter="full", epochs=3, lr=1e-3)
    trainer = build(run_of(config, vit, tmp_path, label_rows(64, seed=1), label_rows(24, seed=2)))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.evaluate()["eval_accuracy"] == 1.0
    after = dict(trainer.model.named_parameters())
    assert len(changed(before, after)) == len(before)  # every weight trains, the new 2-way head included

    (checkpoint,) = (tmp_path / "out").glob("checkpoint-*")
    model = AutoModelForImageClassification.from_pretrained(checkpoint)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    assert model.config.id2label == {0: "blue", 1: "red"}
    rng = random.Random(3)
    wanted = [rng.choice(list(COLORS)) for _ in range(8)]
    images = [Image.open(io.BytesIO(base64.b64decode(png_url(c, rng).partition(",")[2]))) for c in wanted]
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits
    assert [model.config.id2label[int(i)] for i in logits.argmax(-1)] == wanted


def test_lora_trains_a_new_head_over_a_frozen_base_at_another_image_size(vit: Path, tmp_path: Path) -> None:
    """Through `train.main`: the adapter checkpoint in staging carries the new head, the class names and the
    processor resized to imageSize; the ViT interpolates its position embeddings to take it."""
    vision = {"task": "image_classification", "imageSize": 48, "labels": ["red", "blue"]}
    config = contract(vit, tmp_path, vision, adapter="lora", epochs=3, lr=5e-3)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in label_rows(64, seed=4)))
    (tmp_path / "v").write_text("".join(json.dumps(r) + "\n" for r in label_rows(24, seed=5)))
    assert train.main(config, tmp_path / "work") == 0

    (marker,) = (tmp_path / "staging" / "checkpoints").glob("*/COMPLETE")
    checkpoint = marker.parent
    assert json.loads(marker.read_text())["metrics"]["eval_accuracy"] >= 0.9
    assert json.loads((checkpoint / "config.json").read_text())["id2label"] == {"0": "red", "1": "blue"}
    assert json.loads((checkpoint / "preprocessor_config.json").read_text())["size"] == {
        "height": 48,
        "width": 48,
    }
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    head = {k: v for k, v in adapter.items() if "lora" not in k}
    assert {k.split("classifier.")[1]: tuple(v.shape) for k, v in head.items()} == {
        "weight": (2, 32),
        "bias": (2,),
    }
    assert any(torch.count_nonzero(v) for k, v in adapter.items() if "lora_B" in k)  # B starts at zero


def test_vlm_chat_learns_the_assistant_turn_and_saves_a_loadable_checkpoint(
    llava: Path, tmp_path: Path
) -> None:
    config = contract(llava, tmp_path, {"task": "chat"}, adapter="full", epochs=1, lr=1e-3)
    trainer = build(run_of(config, llava, tmp_path, chat_rows(16, seed=1), chat_rows(8, seed=2)))
    batch = next(iter(trainer.get_train_dataloader()))
    tokenizer = trainer.processing_class.tokenizer
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ((batch["input_ids"] == image_token).sum(-1) == 4).all()  # 16x16 image, 8x8 patches
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        learned = tokenizer.decode(ids[labels != -100])
        assert learned in ("It is red.<|im_end|>\n", "It is blue.<|im_end|>\n")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert {n.split(".")[1] for n in changed(before, after)} >= {"vision_tower", "multi_modal_projector"}
    assert "eval_loss" in trainer.evaluate()

    (checkpoint,) = (tmp_path / "out").glob("checkpoint-*")
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    assert torch.equal(model.state_dict()["lm_head.weight"], trainer.model.state_dict()["lm_head.weight"])
    rng = random.Random(5)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    image = Image.open(io.BytesIO(base64.b64decode(png_url("red", rng, side=16).partition(",")[2])))
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


@pytest.mark.parametrize(
    ("marked", "why"),
    [
        (False, r"chat template does not mark assistant turns"),
        (True, r"dataset has assistant turns with weight 0"),
    ],
)
def test_rows_are_prompt_and_completion_when_turns_cannot_be_masked(
    llava: Path, tmp_path: Path, marked: bool, why: str
) -> None:
    """Without `{% generation %}` in the template, or with a `weight: 0` turn to leave out, each row learns
    its one learned assistant turn as a completion; the rest of the conversation is its prompt."""
    model = llava
    if not marked:
        model = tmp_path / "plain"
        shutil.copytree(llava, model)
        template = model / "chat_template.jinja"
        template.write_text(
            template.read_text().replace("{% generation %}", "").replace("{% endgeneration %}", "")
        )
    rows = chat_rows(8, seed=1)
    first = rows[0]["messages"]
    rows[0]["messages"] = [
        *first[:2],
        {"role": "assistant", "content": "Not sure.", "weight": 0},
        first[1],
        first[2],
    ]
    config = contract(model, tmp_path, {"task": "chat"}, adapter="lora", epochs=1, lr=1e-3)
    trainer = build(run_of(config, model, tmp_path, rows, []))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    tokenizer = trainer.processing_class.tokenizer
    assert "Not sure." in tokenizer.decode(batch["input_ids"][0])
    learned = tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    assert learned == first[2]["content"] + "<|im_end|>\n"

    rows[3]["messages"] += [first[1], {"role": "assistant", "content": "Still blue."}]
    with pytest.raises(VisionError, match=rf"training line 4: 2 assistant turns to learn, but .*{why}"):
        build(run_of(config, model, tmp_path, rows, []))


def test_bad_images_fail_naming_their_line(vit: Path, tmp_path: Path) -> None:
    config = contract(vit, tmp_path, {"task": "image_classification"}, adapter="full", epochs=1, lr=1e-3)
    rows = label_rows(6, seed=1)
    rows[2]["image"] = "data:image/png;base64,not*base64!"
    with pytest.raises(
        ImageError, match=r"training line 3: image 1 \(data:image/png;base64,\.\.\.\) .*base64"
    ):
        build(run_of(config, vit, tmp_path, rows, []))
    rows[2]["image"] = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    with pytest.raises(ImageError, match=r"training line 3: .* cannot be decoded: cannot identify image"):
        build(run_of(config, vit, tmp_path, rows, []))
    rows[2]["image"] = "https://example.com/cat.png"
    with pytest.raises(
        ImageError, match=r"training line 3: image 1: https://example.com/cat.png is not fetched"
    ):
        build(run_of(config, vit, tmp_path, rows, []))

    # stored images are read as their batch is built: a missing file fails there, naming its row
    stored = tmp_path / "red.png"
    stored.write_bytes(base64.b64decode(label_rows(1, seed=9)[0]["image"].partition(",")[2]))
    rows = label_rows(6, seed=1)
    rows[0]["image"], rows[1]["image"] = str(stored), f"file://{tmp_path}/missing.png"
    trainer = build(run_of(config, vit, tmp_path, rows, []))
    assert trainer.data_collator([trainer.train_dataset[0]])["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ImageError, match=r"training line 2: image 1: cannot read .*missing\.png"):
        trainer.data_collator([trainer.train_dataset[1]])


@pytest.mark.parametrize(
    ("vision", "val_label", "error"),
    [
        (
            {"labels": ["red", "blue"]},
            "green",
            r"validation line 2: label 'green' is not one of vision.labels",
        ),
        (
            {},
            "green",
            r"validation line 2: label 'green' is not one of the training labels \['blue', 'red'\]",
        ),
        ({"labels": ["red", "red"]}, "red", r"vision.labels: \['red'\] listed more than once"),
        ({"maxImageTokens": 64}, "red", r"maxImageTokens applies to task chat"),
    ],
)
def test_label_and_setting_errors_say_what_to_change(
    vit: Path, tmp_path: Path, vision: dict[str, Any], val_label: str, error: str
) -> None:
    config = contract(
        vit, tmp_path, {"task": "image_classification", **vision}, adapter="full", epochs=1, lr=1e-3
    )
    val = label_rows(3, seed=2)
    val[1]["label"] = val_label
    with pytest.raises(VisionError, match=error):
        build(run_of(config, vit, tmp_path, label_rows(6, seed=1), val))


def test_image_budgets_follow_the_processor_kind(llava: Path, tmp_path: Path) -> None:
    dynamic = Qwen2VLImageProcessorPil()
    photo = Image.new("RGB", (640, 480))
    tokens = int(dynamic(images=[photo], return_tensors="pt")["image_grid_thw"].prod()) // 4
    budget = sized(dynamic, side=None, most_tokens=64)
    assert tokens > 64 >= int(budget(images=[photo], return_tensors="pt")["image_grid_thw"].prod()) // 4
    square = sized(CLIPImageProcessorPil(), side=48)
    assert square(images=[photo], return_tensors="pt")["pixel_values"].shape == (1, 3, 48, 48)
    with pytest.raises(SizingError, match=r"Idefics3ImageProcessorPil resizes by \{'longest_edge': 1456\}"):
        sized(Idefics3ImageProcessorPil(), side=48)

    config = contract(
        llava, tmp_path, {"task": "chat", "maxImageTokens": 3}, adapter="lora", epochs=1, lr=1e-3
    )
    with pytest.raises(
        VisionError, match=r"maxImageTokens 3: LlavaProcessor turns an image into up to 4 tokens"
    ):
        build(run_of(config, llava, tmp_path, chat_rows(2, seed=1), []))
    config = contract(llava, tmp_path, {"task": "chat", "imageSize": 32}, adapter="lora", epochs=1, lr=1e-3)
    with pytest.raises(VisionError, match=r"imageSize 32: this model's vision tower takes 16x16 images"):
        build(run_of(config, llava, tmp_path, chat_rows(2, seed=1), []))
