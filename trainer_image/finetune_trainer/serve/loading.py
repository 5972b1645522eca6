"""Loading exactly the version a ModelDeployment pins, or nothing.

The version folder (an S3 prefix or a local path) is copied into the server's scratch, and the local copy is
verified by the trainer's own promotion rules (`promotion.verify`): every object the manifest lists, with its
size and SHA-256, and the digest of the manifest's bytes against the contract's. A mismatch is a
`LoadError` naming both digests (or the object that differs): the server exits and never reports ready. A
version holding a LoRA adapter (adapter_config.json) is loaded on its base: `base_model_uri` from the
contract, else the base model the version's lineage.json records (with its digest, checked too).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.promotion import LINEAGE, MANIFEST
from finetune_api.serving import ServeContract
from finetune_api.v1alpha1.common import ModelSource
from finetune_trainer.models import materialize
from finetune_trainer.promotion import PromotionError, verify
from finetune_trainer.storage import StorageError, Store, is_s3, local_path


class LoadError(RuntimeError):
    """The version cannot be served as pinned: wrong digest, a corrupt or missing object, no base."""


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    directory: Path
    adapter: bool


def fetch(contract: ServeContract, store: Store, scratch: Path) -> Path:
    """The version, copied to `scratch/version` and verified there; its local folder."""
    uri = contract.model.uri if contract.model.uri.endswith("/") else contract.model.uri + "/"
    target = scratch / "version"
    if target.exists():
        shutil.rmtree(target)
    try:
        if is_s3(uri):
            store.download_prefix(uri, target)
        else:
            shutil.copytree(local_path(uri), target)
    except (StorageError, OSError) as err:
        raise LoadError(f"cannot fetch {uri}: {err}") from err
    if not (target / MANIFEST).exists():
        raise LoadError(f"{uri} has no {MANIFEST}: it is not a promoted version")
    try:
        found = verify(Store(), str(target)).digest
    except PromotionError as err:
        raise LoadError(f"{uri}: {err}") from err
    if found != contract.model.digest:
        raise LoadError(
            f"{uri} has digest {found}, the deployment pins {contract.model.digest}: refusing to serve it"
        )
    return target


def _base(contract: ServeContract, directory: Path) -> ModelSource:
    if contract.base_model_uri:
        return ModelSource(uri=contract.base_model_uri)
    try:
        lineage = json.loads((directory / LINEAGE).read_text())
        base = lineage["baseModel"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LoadError(
            f"{contract.model.uri} holds an adapter and no base: set spec.baseModelUri or promote it with "
            f"its {LINEAGE} ({err})"
        ) from err
    digest = base.get("digest")
    return ModelSource(uri=base["uri"], digest=f"sha256:{digest}" if digest and ":" not in digest else digest)


def load(contract: ServeContract, store: Store, scratch: Path, *, device: str = "cpu") -> Loaded:
    import torch  # noqa: PLC0415 (the server imports torch only once it has a version to load)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    directory = fetch(contract, store, scratch)
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    adapter = (directory / "adapter_config.json").exists()
    try:
        if adapter:
            from peft import PeftModel  # noqa: PLC0415

            base_dir = materialize(_base(contract, directory), store, scratch / "base")
            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
            model = PeftModel.from_pretrained(base, directory).merge_and_unload()
            tokenizer_dir = directory if (directory / "tokenizer_config.json").exists() else base_dir
        else:
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
            tokenizer_dir = directory
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as err:
        raise LoadError(f"cannot load {contract.model.uri}: {err}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device)
    model.eval()
    return Loaded(model, tokenizer, directory, adapter)
