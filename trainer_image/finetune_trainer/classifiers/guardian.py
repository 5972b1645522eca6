"""Prompt attacks and harmful requests from securevector-guardian-model 1.4.0: word (1-2) and character
(`char_wb` 3-5) TF-IDF blocks, each sublinear and L2-normalised, side by side, then a softmax regression over
its classes (benign, data_exfiltration, harmful_content, jailbreak, model_attack, pii, prompt_injection,
social_engineering). The same inference as the package's `svguardian/model/pure_infer.py`, in numpy.

The bundle `svguardian/_runtime/guardian.runtime.json.gz` is plain JSON; its SHA-256 must equal the
`.sha256` file shipped beside it. Like the package, a text is malicious when the probability of all
non-benign classes together reaches the bundle's `threshold`; `probability` gives single classes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from finetune_trainer.classifiers import ClassifierError, package_files
from finetune_trainer.classifiers.tfidf import Vectoriser

DISTRIBUTION = "securevector-guardian-model"
MODULE = "svguardian"
BUNDLE = "_runtime/guardian.runtime.json.gz"
ATTACKS = ("jailbreak", "prompt_injection")  # what a red-team prompt is


class Guardian:
    def __init__(self, folder: Path | None = None, version: str | None = None) -> None:
        if folder is None:
            folder, version = package_files(DISTRIBUTION, MODULE)
        path = folder / BUNDLE
        data = path.read_bytes()
        expected = path.with_name(path.name + ".sha256").read_text().split()[0]
        if hashlib.sha256(data).hexdigest() != expected:
            raise ClassifierError(f"{path}: SHA-256 differs from its .sha256 file; reinstall {DISTRIBUTION}")
        bundle = json.loads(gzip.decompress(data))
        if bundle.get("format") != "svguardian-pure-1":
            raise ClassifierError(f"{path}: unknown bundle format {bundle.get('format')!r}")
        self.classes: list[str] = list(bundle["classes"])
        self.benign = self.classes.index(bundle["benign"])
        self.threshold = float(bundle["threshold"])
        self.n_word = int(bundle["n_word_features"])
        self.word, self.char = (
            Vectoriser.from_settings(
                {"vocabulary": b["vocab"], "ngram_range": b["ngram_range"], "analyzer": analyzer,
                 "sublinear_tf": b["sublinear_tf"]},
                b["idf"],
            )
            for b, analyzer in ((bundle["word"], "word"), (bundle["char"], "char_wb"))
        )  # fmt: skip
        self.coef = np.asarray(bundle["coef"], dtype=np.float64)  # [classes, word + char features]
        self.intercept = np.asarray(bundle["intercept"], dtype=np.float64)
        self.name = f"{DISTRIBUTION} {version}"

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """[texts, classes] softmax probabilities."""
        out = np.zeros((len(texts), len(self.classes)))
        for i, text in enumerate(texts):
            word_cols, word_values = self.word.row(text)
            char_cols, char_values = self.char.row(text)
            scores = (
                self.intercept
                + self.coef[:, word_cols] @ word_values
                + self.coef[:, self.n_word + char_cols] @ char_values
            )
            exp = np.exp(scores - scores.max())
            out[i] = exp / exp.sum()
        return out

    def malicious(self, texts: Sequence[str]) -> list[bool]:
        """The package's verdict: non-benign probability at or above its threshold."""
        proba = self.probabilities(texts)
        return [bool(1.0 - p[self.benign] >= self.threshold) for p in proba]

    def probability(self, texts: Sequence[str], classes: Sequence[str]) -> list[float]:
        """Per text, the summed probability of `classes`."""
        index = [self.classes.index(c) for c in classes]
        return [float(p) for p in self.probabilities(texts)[:, index].sum(axis=1)]

    def verdicts(self, texts: Sequence[str]) -> list[str]:
        """Per text, its most likely class and probability, and this model's name: "jailbreak 0.92 (...)"."""
        found = []
        for row in self.probabilities(texts):
            top = int(row.argmax())
            found.append(f"{self.classes[top]} {row[top]:.2f} ({self.name})")
        return found
