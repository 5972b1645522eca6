"""The safety classifiers an EvalGate uses by default, each scored with numpy alone (no pickle, no sklearn):

- `toxicity`: alt-profanity-check 1.9.1, a calibrated linear SVM over TF-IDF words (Jigsaw toxic comments +
  Davidson hate/offensive data). Its pickles are converted once (`convert`) to JSON + `.npz`.
- `guardian`: securevector-guardian-model 1.4.0, TF-IDF words + character n-grams and a softmax regression
  over benign / prompt_injection / jailbreak / harmful_content / ... (prompt attacks), read from its JSON.
- `refusal`: this project's refusal classifier, a logistic regression over all-MiniLM-L6-v2 embeddings and
  the phrase rules, trained on `data/refusals.jsonl` (deterministic, seconds) and cached.

The model packages are located with `importlib.util.find_spec`, never imported. Converted or trained files
live under `$FINETUNE_CACHE/classifiers/<name>-<version>/` (`builtin.cache_root`); `make env` and the trainer
image fill it with `python -m finetune_trainer.classifiers.convert`.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from finetune_trainer import builtin


class ClassifierError(LookupError):
    """A packaged classifier is missing, tampered with or not converted yet."""


CONVERT_HINT = "run `python -m finetune_trainer.classifiers.convert` (needs scikit-learn==1.9.1) once"


def package_files(distribution: str, module: str) -> tuple[Path, str]:
    """(folder, version) of an installed model package, located and never imported."""
    try:
        folder = builtin.package_dir(builtin.PackagedModel(distribution, module, ""))
    except builtin.BuiltinError as err:
        raise ClassifierError(str(err)) from err
    return folder, importlib.metadata.version(distribution)


def cached(name: str, make: Callable[[Path], None] | None = None) -> Path:
    """`$FINETUNE_CACHE/classifiers/<name>`, made by `make(partial_dir)` when absent (one maker at a time,
    written beside it and renamed into place). Without `make`, a missing folder is a ClassifierError."""
    target = builtin.cache_root() / "classifiers" / name
    if (target / "meta.json").exists():
        return target
    if make is None:
        raise ClassifierError(f"{target} is missing: {CONVERT_HINT}")
    with _locked(target):
        if not (target / "meta.json").exists():
            partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            make(partial)
            os.replace(partial, target)
    return target


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
