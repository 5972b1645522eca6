"""`python -m finetune_trainer.classifiers.convert`: make every default classifier ready, once, in the cache.

- alt-profanity-check's pickles (vectorizer.joblib, model.joblib) are loaded with scikit-learn 1.9.1 (the
  version that wrote them; the `classifiers-build` extra) and written as `meta.json` (vectoriser settings,
  vocabulary, stop words, how folds average) + `weights.npz` (idf; per fold coef, intercept, sigmoid a, b).
  This is the only place that unpickles, and only the package's own files; the trainer never needs sklearn.
- the refusal classifier is trained (`refusal.trained`), which needs the all-MiniLM-L6-v2 package.

Run by `make env` and the trainer image build; an evaluation that finds the files missing says to run it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from finetune_trainer.classifiers import cached, package_files, refusal, toxicity

SKLEARN = "1.9.1"


def convert_profanity_check(target: Path) -> None:
    import joblib  # noqa: PLC0415 (build time only)
    import sklearn  # noqa: PLC0415

    if sklearn.__version__ != SKLEARN:
        raise SystemExit(f"converting {toxicity.DISTRIBUTION} needs scikit-learn=={SKLEARN}")
    folder, version = package_files(toxicity.DISTRIBUTION, toxicity.MODULE)
    vectorizer: Any = joblib.load(folder / "data" / "vectorizer.joblib")
    model: Any = joblib.load(folder / "data" / "model.joblib")
    if vectorizer.analyzer != "word" or vectorizer.preprocessor or vectorizer.tokenizer:
        raise SystemExit(f"{toxicity.DISTRIBUTION}: unexpected vectoriser {vectorizer}")
    if vectorizer.strip_accents or vectorizer.binary or not vectorizer.use_idf:
        raise SystemExit(f"{toxicity.DISTRIBUTION}: unexpected vectoriser settings {vectorizer}")
    folds = model.calibrated_classifiers_
    if model.method != "sigmoid" or list(model.classes_) != [0, 1] or not model.ensemble:
        raise SystemExit(f"{toxicity.DISTRIBUTION}: unexpected calibration {model}")
    stop = vectorizer.get_stop_words()
    meta = {
        "distribution": toxicity.DISTRIBUTION,
        "version": version,
        "converted_with": f"scikit-learn {sklearn.__version__}",
        "averaging": "mean",  # CalibratedClassifierCV(ensemble=True): the folds' probabilities averaged
        "vectoriser": {
            "analyzer": "word",
            "ngram_range": list(vectorizer.ngram_range),
            "lowercase": bool(vectorizer.lowercase),
            "token_pattern": vectorizer.token_pattern,
            "stop_words": sorted(stop) if stop else [],
            "sublinear_tf": bool(vectorizer.sublinear_tf),
            "norm": vectorizer.norm,
            "vocabulary": {str(k): int(v) for k, v in vectorizer.vocabulary_.items()},
        },
    }
    np.savez(
        target / "weights.npz",
        idf=np.asarray(vectorizer.idf_, dtype=np.float64),
        coef=np.stack([f.estimator.coef_[0] for f in folds]).astype(np.float64),
        intercept=np.array([f.estimator.intercept_[0] for f in folds], dtype=np.float64),
        a=np.array([f.calibrators[0].a_ for f in folds], dtype=np.float64),
        b=np.array([f.calibrators[0].b_ for f in folds], dtype=np.float64),
    )
    (target / "meta.json").write_text(json.dumps(meta))


def main() -> int:
    done = cached(toxicity.converted_name(), convert_profanity_check)
    print(f"toxicity: {done}")
    print(f"refusal: {refusal.trained_folder()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
