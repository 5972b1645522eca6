"""DPO: TRL's DPOTrainer on OpenAI preference rows, with the spec's beta, loss type and label smoothing.

Rows arrive as `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`
(after the preference gates dropped ties, repeated pairs and synthetic rows over the cap) and become TRL's
conversational preference shape, `prompt` / `chosen` / `rejected` message lists; TRL renders them with the
model's chat template and learns only the responses.

The reference policy is frozen. With a LoRA adapter and no `dpo.referenceModel`, it is the base model with
the adapter disabled (no second copy in memory); with full fine-tuning it is a second copy of the base; a
given `referenceModel` is materialised like the base model (digest checked) and loaded frozen.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from finetune_api.v1alpha1.finetunejob import DpoSettings
from finetune_trainer import lm_head, ranks
from finetune_trainer.data.rows import Row
from finetune_trainer.methods import Run, plain_messages
from finetune_trainer.models import load_kwargs, materialize, peft_config, prepare_quantized
from finetune_trainer.storage import Store


def preference(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """One OpenAI preference row as TRL's conversational prompt/chosen/rejected."""
    return {
        "prompt": plain_messages(data["input"]["messages"]),
        "chosen": plain_messages(data["preferred_output"]),
        "rejected": plain_messages(data["non_preferred_output"]),
    }


def dataset(rows: list[Row]) -> Dataset:
    return Dataset.from_list([preference(row.data) for row in rows])


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
    )
    return DPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=dataset(run.train_rows),
        eval_dataset=dataset(run.eval_rows) if run.eval_rows else None,
        processing_class=tokenizer,
        peft_config=peft_config(run.config.adapter),
        callbacks=run.callbacks,
    )
