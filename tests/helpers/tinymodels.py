"""Tiny models built from configs, with a tokenizer trained on the fly: real transformers models that train
in seconds on a CPU, so every method's test exercises the real stack without downloading anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]


def tokenizer(corpus: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", chat_template=CHATML
    )


def llama_config(tok: PreTrainedTokenizerFast, **overrides: Any) -> LlamaConfig:
    """The tiny Llama every test model starts from: 2 layers, hidden size 32, `tok`'s vocabulary."""
    settings: dict[str, Any] = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": None,
    }
    return LlamaConfig(**(settings | overrides))


def causal_lm(directory: Path, corpus: list[str]) -> Path:
    """A 2-layer Llama (hidden size 32) and its tokenizer, saved as a transformers folder."""
    tok = tokenizer(corpus)
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(tok)).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


IMAGE_TOKEN = "<image>"
# ChatML over content parts: images become the processor's image token; `{% generation %}` marks what the
# assistant says (its text and end-of-turn), so TRL can mask everything else out of the loss.
VISION_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endgeneration %}"
    "{% else %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def image_classifier(directory: Path, *, head_labels: int = 10, image_size: int = 32) -> Path:
    """A 2-layer ViT (8x8 patches, hidden size 32) with a `head_labels`-way head, as a pretrained
    classifier ships with its own label set, and its image processor, saved as a transformers folder."""
    from transformers import ViTConfig, ViTForImageClassification  # noqa: PLC0415
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil  # noqa: PLC0415

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=image_size,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=head_labels,
    )
    ViTForImageClassification(config).save_pretrained(directory)
    size = {"height": image_size, "width": image_size}
    ViTImageProcessorPil(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(directory)
    return directory


def vision_language_model(directory: Path, corpus: list[str], *, chat_template: str = VISION_CHATML) -> Path:
    """A tiny Llava: a 1-layer CLIP vision tower on 16x16 images (8x8 patches: 4 image tokens), a 2-layer
    Llama, and a LlavaProcessor joining a CLIP image processor and a trained tokenizer plus `<image>`."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration  # noqa: PLC0415
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: PLC0415
    from transformers.models.llava.processing_llava import LlavaProcessor  # noqa: PLC0415

    tok = tokenizer(corpus)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        image_size=16,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        projection_dim=32,
    )
    text = llama_config(tok)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    images = CLIPImageProcessorPil(
        size={"shortest_edge": 16},
        crop_size={"height": 16, "width": 16},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(directory)
    return directory
