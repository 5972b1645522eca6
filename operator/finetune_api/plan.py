"""The run plan: what one run of a FineTuneJob is, defined once for its two executors.

The operator runs a plan with Kubernetes Jobs and S3; `finetune run` runs the same plan with local
processes and a local folder. Neither re-derives any of what is decided here:

- the run id (`run_id`), the same rule in a cluster and on a laptop;
- every location the run writes: its staging layout (data report, progress, checkpoints, holdout scores,
  evaluation report and examples) and the promoted version's URI and manifest;
- "auto" hyperparameters, resolved from the validated rows and the device that trains them;
- the trainer contract of each phase (validate, train, evaluate, promote), one type per command;
- which checkpoint a gate judges (`candidate`) and against which baseline (`baseline`);
- the call that turns an evaluation (or its absence) into the gate's verdict (`verdict`).

A plan is pure: built from the job, its staging root and its output root, it performs no I/O and reads
no clock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from finetune_api.base import TokenLengths
from finetune_api.device import Device
from finetune_api.errors import PermanentError
from finetune_api.gate import EvalReport, decide, verdict_id
from finetune_api.hyperparameters import Resolved, resolve
from finetune_api.promotion import MANIFEST, version_uri
from finetune_api.run_layout import StagingLayout, best_step
from finetune_api.trainer_config import (
    Distributed,
    EvaluateContract,
    EvaluationTarget,
    PromoteContract,
    PromotionTarget,
    ResolvedHyperparameters,
    RunContract,
    StorageTarget,
    TrainContract,
    ValidateContract,
)
from finetune_api.v1alpha1 import EvalGate, FineTuneJob, Reason
from finetune_api.v1alpha1.common import ModelSource
from finetune_api.v1alpha1.evalgate import EvalGateSpec
from finetune_api.v1alpha1.finetunejob import Approval, GateResult

# The spec fields a user may change while a run goes on (everything else is immutable once created).
MUTABLE_SPEC_FIELDS = frozenset({"suspend", "run_policy"})


def run_id(job: FineTuneJob) -> str:
    """`<name>-<8 hex>`: the job's name and what identifies its run. In a cluster that is the object's
    uid (its first group): the spec cannot change after creation, so retries and resumes share the run
    and its checkpoints, and a re-created object starts a new one. Without a uid (a manifest run
    locally) it is a digest of the spec, less the fields that may change while a run goes on: running an
    unchanged manifest again is the same run (it resumes), and any change starts a new one."""
    if job.metadata.uid:
        return f"{job.metadata.name}-{job.metadata.uid.split('-')[0]}"
    spec = json.dumps(job.spec.model_dump(mode="json", exclude=set(MUTABLE_SPEC_FIELDS)), sort_keys=True)
    return f"{job.metadata.name}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def candidate(scored: Iterable[tuple[int, Mapping[str, float]]]) -> int | None:
    """The checkpoint a gate evaluates and promotion publishes, among (step, metrics) pairs: the best
    (`run_layout.best_step`: grader reward, else eval loss), else the latest; None when there is none."""
    candidates = list(scored)
    best = best_step(candidates)
    if best is not None:
        return best
    return max((step for step, _ in candidates), default=None)


@dataclass(frozen=True)
class RunPlan:
    """One run of `job`. `staging_root` holds every job's runs (`s3://<bucket>/<prefix>` in a cluster, a
    work folder locally); `output_root` is where promoted versions go (the job's outputUri by default)."""

    job: FineTuneJob
    run_id: str
    staging_root: str
    output_root: str | None = None

    @classmethod
    def of(
        cls,
        job: FineTuneJob,
        *,
        staging_root: str | None = None,
        output_root: str | None = None,
        run: str | None = None,
    ) -> RunPlan:
        """The plan of `job`: run `run`, else its recorded run id, else the derived one; staged in the
        job's bucket and published to its outputUri unless other roots are given (a local run)."""
        storage = job.spec.storage
        return cls(
            job=job,
            run_id=run or job.status.run_id or run_id(job),
            staging_root=staging_root or f"s3://{storage.bucket}/{storage.prefix}",
            output_root=output_root or job.spec.output_uri,
        )

    # --- where the run writes ---------------------------------------------------------------------

    @property
    def job_root(self) -> str:
        """`<staging root><namespace>/<name>/`: every run of this job is a folder here."""
        meta = self.job.metadata
        return f"{self.staging_root.rstrip('/')}/{meta.namespace or 'default'}/{meta.name}/"

    @property
    def layout(self) -> StagingLayout:
        return StagingLayout(f"{self.job_root}{self.run_id}/")

    @property
    def version_uri(self) -> str:
        """`<outputUri>/<runId>/`: one promoted version per run, never rewritten."""
        if not self.output_root:
            raise PermanentError(Reason.INVALID_SPEC, "spec.outputUri is required to promote a model")
        return version_uri(self.output_root, self.run_id)

    @property
    def manifest_uri(self) -> str:
        return self.version_uri + MANIFEST

    # --- what each phase is given -----------------------------------------------------------------

    def resolve(
        self, rows: int, lengths: TokenLengths | None = None, device: Device | None = None
    ) -> Resolved:
        """Epochs, batch size, accumulation and learning rate for `rows` validated training rows of
        `lengths` estimated tokens, "auto" resolved for `device`: by default what the training pods
        request (`Device.of_resources`); `finetune run` passes the machine it runs on. Without a
        validation file, the rows early stopping holds out are not trained on and do not count."""
        spec = self.job.spec
        if spec.datasets.validation is None:
            rows -= spec.early_stopping.held_out_rows(rows)
        try:
            return resolve(
                spec.hyperparameters,
                rows=rows,
                method=spec.method,
                adapter=spec.adapter.type,
                device=device or Device.of_resources(spec.resources),
                lengths=lengths,
                rft=spec.rft,
            )
        except ValueError as err:
            raise PermanentError(Reason.DATA_UNREADABLE, f"cannot train: {err}") from err

    def train_contract(self, resolved: Resolved) -> TrainContract:
        hp = self.job.spec.hyperparameters
        hyperparameters = ResolvedHyperparameters(
            epochs=resolved.epochs,
            batch_size=resolved.batch_size,
            learning_rate=resolved.learning_rate,
            max_seq_length=hp.max_seq_length,
            packing=hp.packing,
            warmup_ratio=hp.warmup_ratio,
            gradient_accumulation_steps=resolved.gradient_accumulation_steps,
            weight_decay=hp.weight_decay,
            seed=hp.seed,
        )
        return TrainContract.model_validate({**self._common(), "hyperparameters": hyperparameters})

    def _common(self) -> dict[str, object]:
        job, spec = self.job, self.job.spec
        fields = {name: getattr(spec, name) for name in ("method", "base_model", "adapter", "dpo", "rft")}
        return {
            **fields,
            "run_id": self.run_id,
            "job_name": job.metadata.name,
            "namespace": job.metadata.namespace or "default",
            "job_uid": job.metadata.uid,
            "training": spec.datasets.training,
            "validation": spec.datasets.validation,
            "holdout": spec.datasets.holdout,
            "vision": spec.vision,
            "data_gates": spec.data_gates,
            "early_stopping": spec.early_stopping,
            "checkpointing": spec.checkpointing,
            "storage": StorageTarget(
                endpoint=spec.storage.endpoint,
                region=spec.storage.region,
                force_path_style=spec.storage.force_path_style,
                staging_uri=self.layout.root,
                output_uri=self.output_root,
            ),
            "distributed": Distributed(
                nodes=spec.resources.nodes, gpus_per_node=spec.resources.gpus_per_node
            ),
        }

    def validate_contract(self) -> ValidateContract:
        return ValidateContract.model_validate(self._common())

    def evaluate_contract(self, train: TrainContract, gate: EvalGate, step: int) -> EvaluateContract:
        target = EvaluationTarget(
            gate_name=gate.metadata.name,
            gate=gate.spec,
            checkpoint_uri=self.layout.checkpoint(step),
            checkpoint_step=step,
            baseline=self.baseline(gate.spec),
        )
        return EvaluateContract.model_validate({**_fields(train), "evaluation": target})

    def promote_contract(
        self,
        train: TrainContract,
        *,
        gate_name: str,
        result: GateResult,
        approval: Approval | None,
        step: int,
    ) -> PromoteContract:
        target = PromotionTarget(
            checkpoint_uri=self.layout.checkpoint(step),
            checkpoint_step=step,
            version_uri=self.version_uri,
            gate_name=gate_name,
            gate=result,
            approval=approval,
        )
        return PromoteContract.model_validate({**_fields(train), "promotion": target})

    # --- the rules a gate applies -----------------------------------------------------------------

    def baseline(self, gate: EvalGateSpec) -> ModelSource:
        """What the candidate is compared with: the gate's baseline model, else the job's base model."""
        return gate.baseline.model or self.job.spec.base_model

    def verdict(
        self,
        gate: EvalGateSpec,
        report: EvalReport | None,
        *,
        runner: str,
        report_digest: str | None = None,
        unreadable: str | None = None,
        failed: str | None = None,
        at: datetime | None = None,
    ) -> GateResult:
        """The gate's verdict once `runner` (the evaluation Job or process) has finished: on `report`, or
        failing closed with why there is none usable (`unreadable`: the report exists but cannot be read;
        `failed`: the runner failed; neither: it wrote no report). With the report's bytes' digest, the
        verdict gets its id (`gate.verdict_id`), which an approval must name."""
        problem = unreadable
        if problem is None and failed is not None:
            problem = f"{runner} failed: {failed}"
        elif problem is None and report is None:
            problem = f"{runner} finished without writing {self.layout.eval_report}"
        result = decide(gate, report if problem is None else None, problem=problem, at=at)
        if report is not None:
            result.report_uri = self.layout.eval_report
            if report_digest is not None:
                judged = report.checkpoint_digest or report.checkpoint or self.layout.eval_report
                result.verdict_id = verdict_id(judged, report_digest)
        return result


def _fields(contract: RunContract) -> dict[str, object]:
    """A contract's fields as model values (not dumped), to extend it into the next phase's contract."""
    return {name: getattr(contract, name) for name in type(contract).model_fields}
