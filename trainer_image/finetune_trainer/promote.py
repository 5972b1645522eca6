"""`promote`: publish the checkpoint the gate passed, with its model card, lineage and eval report.

Runs after the operator (or `finetune run`) has decided the gate passed and, where the gate asks, a
reviewer approved. It reads what `evaluate` wrote under the staging prefix, renders the report page and
the model card, and hands everything to `promotion.publish`, which copies and verifies every object and
creates the manifest last. A retried pod whose earlier attempt already created this run's manifest (the
pod died before it could exit) finds the version complete and succeeds; a version created by anything
else is refused.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from finetune_api.gate import EvalReport
from finetune_api.promotion import EVAL_REPORT_HTML, EVAL_REPORT_JSON, LINEAGE, MODEL_CARD
from finetune_api.trainer_config import PromoteContract, PromotionTarget, TrainContract
from finetune_trainer.evaluation.report import render_html
from finetune_trainer.model_card import lineage, model_card
from finetune_trainer.promotion import (
    Promotion,
    PromotionConflict,
    PromotionError,
    publish,
    read_manifest,
    verify,
)
from finetune_trainer.storage import StorageError, Store, join

# What a checkpoint holds only to resume training: the optimizer, scheduler and RNG states, the Trainer's
# arguments and state, and the completeness marker. The promoted model is the rest: weights, config,
# tokenizer or processor, and the run's own records under finetune/.
TRAINING_STATE = re.compile(
    r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth|training_args\.bin|trainer_state\.json"
    r"|COMPLETE|global_step\d+/.*)$"
)


def is_model_file(key: str) -> bool:
    return TRAINING_STATE.match(key) is None


def _json(store: Store, uri: str) -> Any:
    try:
        return json.loads(store.read_bytes(uri))
    except StorageError:
        return {}


def documents(config: TrainContract, target: PromotionTarget, store: Store) -> dict[str, bytes]:
    """The model card, lineage and eval report (JSON and HTML) that travel with the weights."""
    raw = store.read_bytes(config.layout.eval_report)
    report = EvalReport.model_validate_json(raw)
    try:
        lines = store.read_bytes(config.layout.eval_examples).decode().splitlines()
        examples = [json.loads(line) for line in lines if line.strip()]
    except StorageError:
        examples = []
    datasets = _json(store, join(target.checkpoint_uri, "finetune/datasets.json"))
    versions = _json(store, join(target.checkpoint_uri, "finetune/versions.json"))
    provenance: dict[str, Any] = {
        "datasets": datasets,
        "versions": versions,
        "gate_name": target.gate_name,
        "approval": target.approval,
        "checkpoint_uri": target.checkpoint_uri,
        "checkpoint_step": target.checkpoint_step,
    }
    card = model_card(config, target.gate, report, **provenance)
    origin = lineage(config, gate=target.gate, **provenance)
    page = render_html(
        report,
        target.gate,
        examples,
        title=f"{config.namespace}/{config.job_name}: EvalGate {target.gate_name}",
        candidate=f"step {target.checkpoint_step} ({target.checkpoint_uri})",
        baseline=report.baseline_model,
    )
    return {
        MODEL_CARD: card.encode(),
        LINEAGE: json.dumps(origin, indent=2, sort_keys=True, default=str).encode(),
        EVAL_REPORT_JSON: raw,
        EVAL_REPORT_HTML: page.encode(),
    }


def run(config: PromoteContract, store: Store) -> Promotion:
    target = config.promotion
    if target.gate.verdict != "Passed":
        raise ValueError(f"the gate's verdict is {target.gate.verdict}: nothing is promoted")
    if target.approval is not None and target.approval.decision != "Approved":
        raise ValueError(f"rejected by {target.approval.by}: nothing is promoted")
    destination, _, version = target.version_uri.rstrip("/").rpartition("/")
    metadata = {
        "job": f"{config.namespace}/{config.job_name}",
        "jobUid": config.job_uid or "",
        "runId": config.run_id,
        "checkpointStep": str(target.checkpoint_step),
    }
    try:
        return publish(
            store,
            source=target.checkpoint_uri,
            destination=destination + "/",
            documents=documents(config, target, store),
            version=version,
            metadata=metadata,
            include=is_model_file,
        )
    except PromotionConflict:
        existing = read_manifest(store, target.version_uri)
        if existing.metadata != metadata:
            raise
        return verify(store, target.version_uri)  # this run's own, from an attempt that died after it


def main(config: PromoteContract) -> int:
    store = Store.for_target(config.storage)
    try:
        published = run(config, store)
    except (PromotionError, StorageError, ValueError) as err:
        print(f"promote failed: {err}", file=sys.stderr)
        return 1
    print(
        f"promoted {published.uri}: {published.object_count} objects, {published.total_bytes:,} bytes, "
        f"digest {published.digest}"
    )
    return 0
