"""The documented "auto" rule: what a user gets for a given training set on a given device."""

from __future__ import annotations

import math

import pytest

from finetune_api.base import TokenLengths
from finetune_api.device import DEFAULT_GPU_MEMORY_GIB, Device
from finetune_api.hyperparameters import estimate_tokens, resolve, token_lengths
from finetune_api.v1alpha1.common import Resources
from finetune_api.v1alpha1.finetunejob import AdapterType, Hyperparameters, Method, RftSettings

CPU = Device.cpu()
H100 = Device.gpu(1, 80.0)
EIGHT_H100 = Device.gpu(8, 80.0)
SHORT = TokenLengths(mean=92, max=101)  # the bundled order-json rows
LONG = TokenLengths(mean=1_500, max=2_000)


def sft(rows: int, device: Device, lengths: TokenLengths | None = SHORT, **hp: object) -> object:
    return resolve(
        Hyperparameters.model_validate(hp),
        rows=rows,
        method=Method.SFT,
        adapter=AdapterType.LORA,
        device=device,
        lengths=lengths,
    )


@pytest.mark.parametrize(
    ("rows", "epochs"),
    [
        (1, 25),  # one row: at most 25 epochs
        (10, 10),  # tiny set: enough epochs to see 100 examples
        (20, 5),
        (1_000, 3),
        (20_000, 1),  # big set: capped at 25,000 examples seen
        (10_000_000, 1),  # but never less than one epoch
    ],
)
@pytest.mark.parametrize("device", [CPU, H100, EIGHT_H100], ids=str)
def test_examples_seen_follow_openai_on_every_device(rows: int, epochs: int, device: Device) -> None:
    for lengths in (SHORT, LONG, None):
        assert sft(rows, device, lengths).epochs == epochs


@pytest.mark.parametrize(
    ("rows", "device", "lengths", "batch", "micro", "accumulation", "steps"),
    [
        # the rule before took batch 1: 900 steps of one row, about 50 minutes on a 2-core CPU
        (300, CPU, SHORT, 8, 8, 1, 114),
        (300, H100, SHORT, 8, 8, 1, 114),  # 100 steps at least: a GPU's room does not cut them
        # long rows: a CPU holds one; accumulating would only take fewer, equally slow steps
        (300, CPU, LONG, 1, 1, 1, 900),
        (300, H100, LONG, 2, 2, 1, 450),
        (20_000, CPU, SHORT, 32, 8, 4, 625),  # OpenAI's batch, in micro-batches a CPU holds
        (20_000, H100, SHORT, 32, 32, 1, 625),
        (20_000, H100, LONG, 32, 2, 16, 625),  # same batch, accumulated to fit the memory
        (20_000, EIGHT_H100, SHORT, 128, 16, 1, 157),  # a full micro-batch on every GPU
        (10, EIGHT_H100, SHORT, 8, 1, 1, 20),  # tiny set, many devices: one row each
        (1, CPU, SHORT, 1, 1, 1, 25),
        (10_000_000, H100, SHORT, 256, 32, 8, 39_063),  # huge set: batch capped at 256
        (10_000_000, CPU, LONG, 256, 1, 256, 39_063),
    ],
)
def test_batch_and_accumulation_from_device_and_lengths(
    rows: int,
    device: Device,
    lengths: TokenLengths,
    batch: int,
    micro: int,
    accumulation: int,
    steps: int,
) -> None:
    r = sft(rows, device, lengths)
    assert (r.batch_size, r.micro_batch, r.gradient_accumulation_steps, r.steps) == (
        batch,
        micro,
        accumulation,
        steps,
    )
    assert r.batch_size == r.micro_batch * device.count * r.gradient_accumulation_steps
    assert r.steps == r.epochs * math.ceil(rows / r.batch_size)
    assert r.tokens == r.epochs * rows * min(2048, lengths.mean)


def test_gpu_memory_sizes_the_micro_batch() -> None:
    small, large = sft(20_000, Device.gpu(1, 24.0)), sft(20_000, Device.gpu(1, 141.0))
    assert (small.batch_size, small.micro_batch, small.gradient_accumulation_steps) == (32, 8, 4)
    assert (large.batch_size, large.micro_batch, large.gradient_accumulation_steps) == (64, 64, 1)


def test_unmeasured_rows_count_as_max_seq_length() -> None:
    unknown = sft(20_000, H100, None)
    assert unknown == sft(20_000, H100, TokenLengths(mean=2048, max=2048))
    assert (unknown.micro_batch, unknown.gradient_accumulation_steps) == (2, 16)
    capped = sft(20_000, H100, TokenLengths(mean=9_000, max=90_000), max_seq_length=1024)
    assert (capped.micro_batch, capped.tokens) == (4, 20_000 * 1024)


def test_full_fine_tuning_halves_a_gpus_token_budget() -> None:
    hp = Hyperparameters()
    lora = resolve(hp, rows=20_000, method=Method.SFT, adapter=AdapterType.LORA, device=H100, lengths=LONG)
    full = resolve(hp, rows=20_000, method=Method.SFT, adapter=AdapterType.FULL, device=H100, lengths=LONG)
    assert (lora.micro_batch, full.micro_batch) == (2, 1)
    assert full.batch_size == lora.batch_size == 32


def test_preference_and_rft_rows_are_several_sequences() -> None:
    hp = Hyperparameters()
    dpo = resolve(hp, rows=500_000, method=Method.DPO, adapter=AdapterType.LORA, device=H100, lengths=SHORT)
    assert dpo.batch_size == 64  # capped: each row is two sequences
    assert dpo.micro_batch == 16  # 5,120 tokens / (2 x 101)
    rft = resolve(
        hp,
        rows=1_000,
        method=Method.RFT,
        adapter=AdapterType.LORA,
        device=H100,
        lengths=SHORT,
        rft=RftSettings.model_validate(
            {
                "grader": {
                    "type": "string_check",
                    "name": "g",
                    "input": "a",
                    "reference": "b",
                    "operation": "eq",
                }
            }
        ),
    )
    assert rft.micro_batch == 1  # 8 generations x (101 + 512) tokens fill 5,120
    assert rft.tokens == 3 * 1_000 * 8 * (92 + 512)


def test_packing_batches_windows() -> None:
    r = sft(10_000, H100, SHORT, packing=True)
    windows = math.ceil(10_000 * 92 / 2048)  # 450 windows of 2,048 tokens
    assert r.micro_batch == 2  # 5,120 tokens hold two windows
    assert r.steps == r.epochs * math.ceil(windows / r.batch_size)


@pytest.mark.parametrize(
    ("batch", "scale"),
    [(1, 0.5), (2, 0.5), (4, math.sqrt(0.5)), (8, 1.0), (16, math.sqrt(2)), (32, 2.0), (256, 2.0)],
)
def test_learning_rate_follows_the_batch_by_its_square_root(batch: int, scale: float) -> None:
    r = sft(1_000, CPU, batch_size=batch)
    assert r.learning_rate == pytest.approx(2e-4 * scale)
    doubled = sft(1_000, CPU, batch_size=batch, learning_rate_multiplier=2.0)
    assert doubled.learning_rate == pytest.approx(4e-4 * scale)


@pytest.mark.parametrize(
    ("method", "adapter", "lr"),
    [
        (Method.SFT, AdapterType.LORA, 2e-4),
        (Method.SFT, AdapterType.FULL, 2e-5),
        (Method.DPO, AdapterType.QLORA, 5e-6),
        (Method.RFT, AdapterType.FULL, 1e-6),
    ],
)
def test_base_learning_rate_per_method_and_adapter(method: Method, adapter: AdapterType, lr: float) -> None:
    hp = Hyperparameters(batch_size=8)
    r = resolve(hp, rows=100, method=method, adapter=adapter, device=CPU, lengths=SHORT)
    assert r.learning_rate == pytest.approx(lr)


@pytest.mark.parametrize("device", [CPU, H100, EIGHT_H100], ids=str)
@pytest.mark.parametrize("lengths", [SHORT, LONG, None])
def test_explicit_values_are_never_changed(device: Device, lengths: TokenLengths | None) -> None:
    hp = {"epochs": 2, "batch_size": 48, "learning_rate": 3e-5, "gradient_accumulation_steps": 3}
    r = sft(20_000, device, lengths, **hp)
    assert (r.epochs, r.batch_size, r.learning_rate, r.gradient_accumulation_steps) == (2, 48, 3e-5, 3)
    # an explicit batch is split into micro-batches the device holds, never resized
    split = sft(300, CPU, LONG, batch_size=64)
    assert (split.batch_size, split.micro_batch, split.gradient_accumulation_steps) == (64, 1, 64)
    # explicit accumulation with an auto batch: the micro-batch shrinks to fit it
    kept = sft(20_000, H100, SHORT, gradient_accumulation_steps=4)
    assert (kept.batch_size, kept.micro_batch, kept.gradient_accumulation_steps) == (32, 8, 4)


def test_empty_dataset_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty training set"):
        sft(0, CPU)


def test_summary_names_the_schedule_and_the_device() -> None:
    assert sft(300, CPU).summary() == (
        "3 epochs, batch size 8 (8 per device x 1 accumulation x 1 CPU process), learning rate 0.0002; "
        "114 optimizer steps, about 82,800 tokens"
    )


@pytest.mark.parametrize(
    ("resources", "device"),
    [
        ({"gpusPerNode": 0, "nodes": 2}, Device.cpu(2)),
        ({}, Device.gpu(1, DEFAULT_GPU_MEMORY_GIB)),  # an unnamed GPU: the small common size
        (
            {
                "gpusPerNode": 8,
                "nodes": 2,
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            },
            Device.gpu(16, 80.0, "NVIDIA-H100-80GB-HBM3"),
        ),
        ({"nodeSelector": {"nvidia.com/gpu.product": "Tesla-T4"}}, Device.gpu(1, 16.0, "Tesla-T4")),
        (
            {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200", "nvidia.com/gpu.memory": "143771"}},
            Device.gpu(1, 140.4, "NVIDIA-H200"),
        ),
    ],
)
def test_the_operator_knows_the_device_from_the_pods_request(
    resources: dict[str, object], device: Device
) -> None:
    assert Device.of_resources(Resources.model_validate(resources)) == device


def test_tokens_are_estimated_from_utf8_bytes() -> None:
    assert [estimate_tokens(t) for t in ("", "abc", "abcd", "日本")] == [0, 1, 2, 2]
    assert token_lengths(["abc", "abcdefghi"]) == TokenLengths(mean=2, max=3)
    assert token_lengths([]) is None
