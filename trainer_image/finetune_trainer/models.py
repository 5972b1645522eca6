"""Base models: from a `ModelSource` to a local directory transformers loads, and the adapter around it.

Sources: `builtin://models/<name>` (shipped with the image), `s3://bucket/prefix/` (downloaded once per
run into scratch: into a temporary folder beside the target, renamed into place when complete, so a folder
under the final name is always whole), or a directory on a mounted volume. When the source names a
digest, the files must match it: the digest is the sha256 of the manifest, one line
`<sha256>  <relative path>` per file, sorted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, cast

from finetune_api.v1alpha1.common import ModelSource
from finetune_api.v1alpha1.finetunejob import Adapter, AdapterType
from finetune_trainer.storage import Store, is_s3, local_path

DEFAULT_RANK = 16
DEFAULT_DROPOUT = 0.05


class ModelError(RuntimeError):
    pass


def manifest_digest(directory: Path) -> str:
    lines = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(directory)}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def materialize(source: ModelSource, store: Store, scratch: Path) -> Path:
    """A local directory holding the model's files, checked against `source.digest` when given.

    Writes scratch: under torchrun call it through `ranks.local_zero_first`."""
    if is_s3(source.uri):
        # one folder per URI: evaluate materializes a baseline model and the job's base model side by side
        directory = scratch / f"model-{hashlib.sha256(source.uri.encode()).hexdigest()[:12]}"
        if not (directory / "config.json").exists():
            prefix = source.uri if source.uri.endswith("/") else source.uri + "/"
            print(f"downloading {source.uri} to {directory}", flush=True)
            partial = directory.with_name(f".{directory.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            store.download_prefix(prefix, partial)
            partial.mkdir(parents=True, exist_ok=True)  # an empty prefix: config.json is missed below
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(partial, directory)
    else:
        directory = local_path(source.uri)
    if not (directory / "config.json").exists():
        raise ModelError(
            f"{source.uri}: no config.json there; a model is a transformers save_pretrained folder"
        )
    if source.digest:
        found = manifest_digest(directory)
        expected = source.digest if source.digest.startswith("sha256:") else f"sha256:{source.digest}"
        if found != expected:
            raise ModelError(f"{source.uri}: files have digest {found}, the spec expects {expected}")
    return directory


def peft_config(adapter: Adapter, task_type: str = "CAUSAL_LM") -> Any:
    """The LoRA settings for a lora/qlora adapter; None for full fine-tuning."""
    if adapter.type == AdapterType.FULL:
        return None
    from peft import LoraConfig  # noqa: PLC0415

    rank = adapter.rank or DEFAULT_RANK
    targets = adapter.target_modules or ["all-linear"]
    return LoraConfig(
        r=rank,
        lora_alpha=cast(int, adapter.alpha or 2 * rank),  # peft divides it by r; a float is fine
        lora_dropout=DEFAULT_DROPOUT if adapter.dropout is None else adapter.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type=task_type,
    )


def load_kwargs(adapter: Adapter, *, gpu: bool) -> dict[str, Any]:
    """from_pretrained arguments: float32 on CPU (no bf16 kernels worth using), bf16 on GPU, and 4-bit
    NF4 weights for QLoRA, which has no CPU kernels."""
    import torch  # noqa: PLC0415

    if adapter.type == AdapterType.QLORA:
        if not gpu:
            raise ModelError(
                "adapter.type qlora needs a GPU: 4-bit quantization (bitsandbytes) has no CPU kernels; "
                "use lora on CPU"
            )
        from transformers import BitsAndBytesConfig  # noqa: PLC0415

        quantization = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        return {"dtype": torch.bfloat16, "quantization_config": quantization}
    return {"dtype": torch.bfloat16 if gpu else torch.float32}


def prepare_quantized(model: Any, adapter: Adapter, *, activation_checkpointing: bool) -> Any:
    """A QLoRA base model made ready for training an adapter on it (peft's `prepare_model_for_kbit_training`:
    every base weight frozen, the layers kept unquantized (norms, embeddings, head) upcast to float32 for
    stable updates, and input gradients on when activations are recomputed). TRL's trainers do not do this
    themselves; LoRA and full fine-tuning return the model unchanged."""
    if adapter.type != AdapterType.QLORA:
        return model
    from peft import prepare_model_for_kbit_training  # noqa: PLC0415

    return prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model, use_gradient_checkpointing=activation_checkpointing
    )
