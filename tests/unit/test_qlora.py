"""QLoRA up to the device: the 4-bit quantization and LoRA settings a qlora job loads with, the k-bit
preparation only QLoRA gets, the refusal on a CPU, and bench/gpu_check.py's settings and its refusal without
CUDA (the run itself needs a GPU: see docs/trainer.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_api.v1alpha1.finetunejob import Adapter, AdapterType
from finetune_trainer import models
from finetune_trainer.models import ModelError, load_kwargs, peft_config, prepare_quantized

GPU_CHECK = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def test_qlora_loads_nf4_double_quantized_weights_computing_in_bf16() -> None:
    kwargs = load_kwargs(Adapter(type=AdapterType.QLORA), gpu=True)
    quantization = kwargs["quantization_config"]
    assert kwargs["dtype"] is torch.bfloat16
    assert quantization.load_in_4bit
    assert not quantization.load_in_8bit
    assert quantization.bnb_4bit_quant_type == "nf4"
    assert quantization.bnb_4bit_use_double_quant
    assert quantization.bnb_4bit_compute_dtype is torch.bfloat16


def test_qlora_trains_the_same_lora_as_lora() -> None:
    qlora = peft_config(Adapter(type=AdapterType.QLORA, rank=8, alpha=16, dropout=0.1))
    lora = peft_config(Adapter(type=AdapterType.LORA, rank=8, alpha=16, dropout=0.1))
    assert qlora.to_dict() == lora.to_dict()
    assert (qlora.r, qlora.lora_alpha, qlora.lora_dropout, qlora.task_type) == (8, 16, 0.1, "CAUSAL_LM")
    default = peft_config(Adapter(type=AdapterType.QLORA))
    assert (default.r, default.lora_alpha, default.target_modules) == (16, 32, "all-linear")


def test_qlora_on_cpu_is_refused_before_anything_loads() -> None:
    with pytest.raises(ModelError, match=r"qlora needs a GPU.*bitsandbytes.*use lora on CPU"):
        load_kwargs(Adapter(type=AdapterType.QLORA), gpu=False)


@pytest.mark.parametrize(
    ("adapter", "checkpointing", "prepared"),
    [
        (AdapterType.QLORA, False, {"use_gradient_checkpointing": False}),
        (AdapterType.QLORA, True, {"use_gradient_checkpointing": True}),
        (AdapterType.LORA, False, None),
        (AdapterType.FULL, False, None),
    ],
)
def test_only_a_quantized_base_is_prepared_for_kbit_training(
    monkeypatch: pytest.MonkeyPatch, adapter: AdapterType, checkpointing: bool, prepared: Any
) -> None:
    calls: list[dict[str, Any]] = []

    def prepare(model: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return ("prepared", model)

    monkeypatch.setattr("peft.prepare_model_for_kbit_training", prepare)
    model = object()
    result = prepare_quantized(model, Adapter(type=adapter), activation_checkpointing=checkpointing)
    assert calls == ([prepared] if prepared else [])
    assert result == (("prepared", model) if prepared else model)


def test_bitsandbytes_imports_without_a_gpu() -> None:
    bnb = pytest.importorskip("bitsandbytes")  # the trainer-gpu extra; `make env` installs it
    assert bnb.__version__
    assert models.ModelError  # nothing of the trainer needs it until a qlora model loads


def _gpu_check() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_shows_the_trainers_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert _gpu_check().main(["--dry-run", "--batch-size", "4", "--max-length", "128"]) == 0
    runs = {r["adapter"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert set(runs) == {"qlora", "lora"}
    assert runs["qlora"]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert runs["qlora"]["quantization"]["bnb_4bit_compute_dtype"] == "bfloat16"
    assert runs["lora"]["quantization"] is None
    for run in runs.values():
        assert run["dtype"] == "torch.bfloat16"
        assert run["bf16"] is True
        assert (run["per_device_batch"], run["max_length"]) == (4, 128)
        assert run["lora"] == {"r": 16, "alpha": 32, "targets": "all-linear"}
        assert run["rows"] > 0


def test_gpu_check_refuses_without_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _gpu_check().main(["--steps", "2"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _gpu_check().main(["--steps", "0"])
