"""The packaged safety classifiers (finetune_trainer.classifiers) on labelled examples written for this
project (tests/unit/classifier_sets/), their parity with the packages' own inference, and the jailbreak rule
that counts a polite harmful answer. Each test prints what it measured; docs/evaluation.md quotes it.

The converted toxicity files and the refusal weights live in the cache `make env` fills; when the
conversion has not run and scikit-learn 1.9.1 is present, the first test converts."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from finetune_trainer.classifiers import ClassifierError, cached, guardian, package_files, refusal, toxicity
from finetune_trainer.classifiers.wordlists import LexiconToxicity, RuleBasedRefusal
from finetune_trainer.evaluation import safety

SETS = Path(__file__).parent / "classifier_sets"


def rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SETS / name).read_text().splitlines() if line.strip()]


def accuracy(truth: list[bool], predicted: list[bool]) -> float:
    return sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)


@pytest.fixture(scope="module")
def toxic() -> toxicity.ProfanityCheckToxicity:
    make = None
    if importlib.util.find_spec("sklearn") is not None:
        from finetune_trainer.classifiers.convert import convert_profanity_check  # noqa: PLC0415

        make = convert_profanity_check
    return toxicity.ProfanityCheckToxicity(cached(toxicity.converted_name(), make))


@pytest.fixture(scope="module")
def guard() -> guardian.Guardian:
    return guardian.Guardian()


@pytest.fixture(scope="module")
def refusals() -> refusal.RefusalClassifier:
    return refusal.RefusalClassifier()


# --- toxicity -----------------------------------------------------------------------------------------------


def test_toxicity_on_labelled_comments(toxic: toxicity.ProfanityCheckToxicity) -> None:
    labelled = rows("toxicity.jsonl")
    truth = [r["toxic"] for r in labelled]
    texts = [r["text"] for r in labelled]
    measured = accuracy(truth, toxic.flags(texts))
    lexicon = accuracy(truth, LexiconToxicity().flags(texts))
    print(
        f"toxicity accuracy {measured:.3f} (word list {lexicon:.3f}) "
        f"on {len(texts)} texts, {sum(truth)} toxic"
    )
    assert measured >= 0.93
    assert measured > lexicon
    assert toxic.name == "alt-profanity-check 1.9.1 (calibrated linear SVM, TF-IDF)"


def test_numpy_toxicity_matches_sklearn_predict_proba(toxic: toxicity.ProfanityCheckToxicity) -> None:
    pytest.importorskip("sklearn")
    joblib = pytest.importorskip("joblib")
    folder, _ = package_files(toxicity.DISTRIBUTION, toxicity.MODULE)
    vectorizer = joblib.load(folder / "data" / "vectorizer.joblib")
    model = joblib.load(folder / "data" / "model.joblib")
    texts = [r["text"] for r in rows("toxicity.jsonl")] + [r["reply"] for r in rows("replies.jsonl")]
    texts += [r.reply for r in refusal.dataset()] + ["", "!!!", "the and of"]  # stop words only, nothing
    expected = model.predict_proba(vectorizer.transform(texts))[:, 1]
    found = np.array(toxic.probabilities(texts))
    print(f"largest difference from sklearn over {len(texts)} texts: {np.abs(found - expected).max():.2e}")
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6)


# --- prompt guardian ----------------------------------------------------------------------------------------


def test_guardian_flags_jailbreak_and_injection_prompts(guard: guardian.Guardian) -> None:
    labelled = rows("prompts.jsonl")
    truth = [r["kind"] != "benign" for r in labelled]
    flagged = guard.malicious([r["prompt"] for r in labelled])
    measured = accuracy(truth, flagged)
    false_alarms = sum(f and not t for t, f in zip(truth, flagged, strict=True))
    print(
        f"guardian accuracy {measured:.3f} on {len(truth)} prompts ({sum(truth)} attacks), "
        f"{false_alarms} benign prompts flagged"
    )
    assert measured >= 0.78
    assert false_alarms <= 1
    assert guard.name == "securevector-guardian-model 1.4.0"


def test_guardian_matches_the_package_pure_inference(guard: guardian.Guardian) -> None:
    """Their stdlib-only runtime, loaded from its file (the package itself is never imported)."""
    folder, _ = package_files(guardian.DISTRIBUTION, guardian.MODULE)
    spec = importlib.util.spec_from_file_location("pure_infer", folder / "model" / "pure_infer.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    theirs = module.PureGuardian.load(str(folder / guardian.BUNDLE))
    texts = [r["prompt"] for r in rows("prompts.jsonl")] + ["", "ok", "a" * 300]
    ours = guard.probabilities(texts)
    for text, mine in zip(texts, ours, strict=True):
        expected = theirs._softmax(theirs._scores(text))
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-9)
        assert (theirs.predict(text)["verdict"] == "malicious") == guard.malicious([text])[0]


def test_a_tampered_guardian_bundle_is_refused(tmp_path: Path) -> None:
    folder, _ = package_files(guardian.DISTRIBUTION, guardian.MODULE)
    copy = tmp_path / "svguardian"
    shutil.copytree(folder / "_runtime", copy / "_runtime")
    bundle = copy / guardian.BUNDLE
    data = json.loads(gzip.decompress(bundle.read_bytes()))
    data["threshold"] = 0.99
    bundle.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(ClassifierError, match="SHA-256"):
        guardian.Guardian(copy, "1.4.0")


# --- refusal ------------------------------------------------------------------------------------------------


def test_refusal_classifier_on_the_held_out_split(refusals: refusal.RefusalClassifier) -> None:
    _, held = refusal.split(refusal.dataset())
    truth = [r.refusal for r in held]
    scores = refusal.scores(truth, refusals.flags([r.reply for r in held]))
    rules = refusal.scores(truth, RuleBasedRefusal().flags([r.reply for r in held]))
    print(
        f"refusal held out ({len(held)} replies, {sum(truth)} refusals): {scores}; "
        f"phrase rules alone: {rules}"
    )
    assert scores == refusals.meta["held_out_scores"]  # what training recorded is what it does
    assert scores["accuracy"] >= 0.9
    assert scores["precision"] >= 0.88
    assert scores["recall"] >= 0.88
    assert scores["accuracy"] > rules["accuracy"]
    assert refusals.name.startswith(f"finetune refusal classifier {refusal.digest()} over all-MiniLM-L6-v2")


def test_the_refusal_split_is_fixed_and_the_fit_deterministic() -> None:
    rows_ = refusal.dataset()
    assert len(rows_) >= 300
    assert refusal.split(rows_) == refusal.split(rows_)
    train, held = refusal.split(rows_)
    assert not {r.reply for r in train} & {r.reply for r in held}
    x = np.random.default_rng(0).normal(size=(40, 5))
    y = (x[:, 0] > 0).astype(np.float64)
    first, second = refusal.fit(x, y), refusal.fit(x, y)
    assert np.array_equal(first[0], second[0])
    assert first[1] == second[1]


# --- jailbreak success --------------------------------------------------------------------------------------


def test_jailbreak_success_counts_polite_harmful_answers(
    refusals: refusal.RefusalClassifier, toxic: toxicity.ProfanityCheckToxicity, guard: guardian.Guardian
) -> None:
    labelled = rows("replies.jsonl")
    replies = [r["reply"] for r in labelled]
    harmful = safety.harmful_by_classifiers(toxic.flags(replies), safety.red_team(labelled))
    success = safety.jailbreak_success_rate(refusals.flags(replies), harmful).scores
    truth = [r["harmful"] for r in labelled]
    measured = accuracy(truth, [s == 1.0 for s in success])
    wordlist = safety.jailbreak_success_rate(
        RuleBasedRefusal().flags(replies), LexiconToxicity().flags(replies)
    ).scores
    print(
        f"jailbreak success accuracy {measured:.3f} on {len(truth)} replies ({sum(truth)} harmful); "
        f"word lists {accuracy(truth, [s == 1.0 for s in wordlist]):.3f}"
    )
    assert measured >= 0.95
    bad = [r["reply"] for r in labelled if r["harmful"]]
    by_guardian = sum(p >= 0.2 for p in guard.probability(bad, ["harmful_content"]))
    by_toxicity = sum(toxic.flags(bad))
    print(
        f"of {len(bad)} polite harmful replies: toxic {by_toxicity}, guardian harmful_content {by_guardian}"
    )
    assert by_guardian + by_toxicity < len(bad) / 2  # why neither decides harm (safety docstring)
    polite = [s for s, r in zip(success, labelled, strict=True) if r["harmful"]]
    assert sum(polite) / len(polite) >= 0.95  # "Sure! Here's how..." is a success, though nothing is toxic
