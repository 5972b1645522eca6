"""DPO: TRL's DPOTrainer on OpenAI preference rows, with the spec's beta, loss type and label smoothing.

Rows arrive as `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`
(after the preference gates dropped ties, repeated pairs and synthetic rows over the cap) and become TRL's
conversational preference shape, `prompt` / `chosen` / `rejected` message lists; TRL renders them with the
model's chat template and learns only the responses.

The reference policy is frozen. With a LoRA adapter and no `dpo.referenceModel`, it is the base model with
the adapter disabled (no second copy in memory); with full fine-tuning it is the base model as loaded, before
the first step (no second copy either); a given `referenceModel` is materialised like the base model (digest
checked) and loaded frozen.

Frozen, the reference scores each pair once: when the trainer is built, its log-probabilities of the chosen
and the rejected response of every training and validation row are computed (TRL's
`precompute_ref_log_probs`), and every step reads them from its batch instead of running the reference
forward again, in every epoch. The pass goes through the LM head training uses (`lm_head`: only response
positions are projected), so the losses, rewards and evaluation are those of a reference run at every step.
A resumed run scores the rows again when it starts, from the base (or the given reference), never from the
restored weights: one forward pass over the rows, which a resumed single-epoch run pays for rows it had
already trained on.

TRL keeps these numbers in a datasets cache file, written by its main process and read by every rank. Our
datasets live in memory, so that file would sit in a temporary folder of each process's own (and ranks on
other nodes never see rank 0's disk; under torchrun the other ranks failed to open it): `ReferenceOnce`
keeps them in memory instead. Under torchrun each rank
scores its share of the batches and every rank gathers all of the scores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from trl.trainer import dpo_trainer

from finetune_api.v1alpha1.finetunejob import DpoSettings
from finetune_trainer import lm_head, ranks
from finetune_trainer.data.rows import Row
from finetune_trainer.methods import Run, plain_messages
from finetune_trainer.models import load_kwargs, materialize, peft_config, prepare_quantized
from finetune_trainer.storage import Store

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def preference(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """One OpenAI preference row as TRL's conversational prompt/chosen/rejected."""
    return {
        "prompt": plain_messages(data["input"]["messages"]),
        "chosen": plain_messages(data["preferred_output"]),
        "rejected": plain_messages(data["non_preferred_output"]),
    }


def dataset(rows: list[Row]) -> Dataset:
    return Dataset.from_list([preference(row.data) for row in rows])


@contextmanager
def _no_weight_hash() -> Iterator[None]:
    """TRL hashes every weight of the reference (sha256 of a float32 copy on the CPU: 1.4 s for the bundled
    135M model here, so about a minute for 7B) only to name its cache file; numbers kept in memory need no
    name."""
    hashing = dpo_trainer.hash_module
    dpo_trainer.hash_module = lambda module: ""
    try:
        yield
    finally:
        dpo_trainer.hash_module = hashing


class ReferenceOnce(DPOTrainer):
    """TRL's DPOTrainer with `precompute_ref_log_probs`, its reference log-probabilities kept in memory."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        with _no_weight_hash():
            super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """The rows with each one's reference log-probabilities of its chosen and rejected responses, scored
        by TRL's `compute_ref_log_probs` (the adapter disabled, or the reference model) in batches shared out
        over the ranks; `gather_for_metrics` gives every rank all of them, in the rows' order."""
        started = time.monotonic()
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            shuffle=False,
        )
        model = self.ref_model or self.model
        chosen, rejected = [], []
        for batch in self.accelerator.prepare(loader):
            scores = self.compute_ref_log_probs(model, batch)  # type: ignore[no-untyped-call]
            pair = self.accelerator.gather_for_metrics(scores)
            chosen.append(pair[0].float().cpu())
            rejected.append(pair[1].float().cpu())
        scored = dataset
        for column, values in zip(REFERENCE_COLUMNS, (chosen, rejected), strict=True):
            scored = scored.add_column(column, torch.cat(values).tolist())
        if self.accelerator.is_main_process:
            took = time.monotonic() - started
            print(f"reference log-probabilities of {len(scored)} {name} pairs in {took:.1f} s", flush=True)
        return scored


def build(run: Run) -> DPOTrainer:
    settings = run.config.dpo or DpoSettings()
    lm_head.score_labelled_only()
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = load_kwargs(run.config.adapter, gpu=run.gpu)
    model = AutoModelForCausalLM.from_pretrained(run.model_dir, **kwargs)
    model = prepare_quantized(model, run.config.adapter, activation_checkpointing=False)
    reference = None
    if settings.reference_model is not None:
        store = Store.for_target(run.config.storage)
        source, folder = settings.reference_model, run.output_dir.parent / "reference-model"
        where = ranks.local_zero_first(
            "download the reference model", lambda: materialize(source, store, folder)
        )
        reference = AutoModelForCausalLM.from_pretrained(where, dtype=kwargs["dtype"])
    args = DPOConfig(
        **run.common_args(),
        beta=settings.beta,
        loss_type=[settings.loss_type],
        label_smoothing=settings.label_smoothing,
        max_length=run.hp.max_seq_length,
        dataset_num_proc=None,
        precompute_ref_log_probs=True,  # the frozen reference scores each pair once, not at every step
    )
    return ReferenceOnce(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=dataset(run.train_rows),
        eval_dataset=dataset(run.eval_rows) if run.eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config(run.config.adapter),
        callbacks=run.callbacks,
    )
