"""`validate-data`: read the run's datasets, run the data gates, write `data-report.json` to the staging
prefix. Exit 0 when the gates pass, 1 when they fail; the report says why either way, including when a
file cannot be read at all. Runs on CPU, before any GPU is requested. For a vision job it also reads and
decodes every image of the datasets once, refusing what training would refuse (http(s) URLs, missing files
or objects, undecodable data), each named by split, line and image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from finetune_api.run_layout import DataValidationReport
from finetune_api.trainer_config import RunContract
from finetune_api.v1alpha1.common import DatasetSource
from finetune_api.v1alpha1.finetunejob import Method
from finetune_trainer.data import gates
from finetune_trainer.data.images import ImageReader
from finetune_trainer.data.rows import Dataset, read_jsonl
from finetune_trainer.storage import StorageError, Store


@dataclass(frozen=True)
class Loaded:
    splits: dict[str, Dataset]
    digests: dict[str, str]  # split -> sha256 of the file as read
    failures: list[str]


def sources(config: RunContract) -> dict[str, DatasetSource]:
    found = {"training": config.training, "validation": config.validation, "holdout": config.holdout}
    return {name: source for name, source in found.items() if source is not None}


def load(config: RunContract, store: Store) -> Loaded:
    splits: dict[str, Dataset] = {}
    digests: dict[str, str] = {}
    failures: list[str] = []
    for name, source in sources(config).items():
        try:
            content = store.read_bytes(source.uri)
        except StorageError as err:
            failures.append(f"{name}: {err}")
            continue
        digest = hashlib.sha256(content).hexdigest()
        digests[name] = digest
        expected = (source.sha256 or "").removeprefix("sha256:")
        if expected and expected != digest:
            failures.append(f"{name}: {source.uri} has sha256 {digest}, the spec expects {expected}")
        splits[name] = read_jsonl(source.uri, content, source.format)
    return Loaded(splits, digests, failures)


def refused_images(config: RunContract, loaded: Loaded, store: Store) -> list[str]:
    """A vision job's images that training would refuse (remote URLs, missing files or objects, what does
    not decode), each named by split, line and place in the row."""
    if config.method != Method.VISION:
        return []
    reader = ImageReader(store)
    return [line for name, data in loaded.splits.items() for line in reader.refused(data.rows, split=name)]


def check(config: RunContract, store: Store) -> gates.Outcome:
    loaded = load(config, store)
    if "training" not in loaded.splits:
        report = DataValidationReport(passed=False, failed_rules=loaded.failures)
        return gates.Outcome(report)
    outcome = gates.run(loaded.splits, config.data_gates)
    failures = loaded.failures + refused_images(config, loaded, store)
    if failures:
        rules = failures + outcome.report.failed_rules
        outcome.report = outcome.report.model_copy(update={"passed": False, "failed_rules": rules[:32]})
    return outcome


def main(config: RunContract) -> int:
    store = Store.for_target(config.storage)
    outcome = check(config, store)
    report = outcome.report
    store.write_bytes(config.layout.data_report, report.model_dump_json(indent=2).encode())
    verdict = "passed" if report.passed else "FAILED"
    print(
        f"data gates {verdict}: rows {report.rows}, duplicate rate {report.duplicate_rate:.2%}, "
        f"leakage {report.leakage_rate:.2%}, PII {report.pii_findings or 'none'}"
    )
    for rule in report.failed_rules:
        print(f"  - {rule}")
    return 0 if report.passed else 1
