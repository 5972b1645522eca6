"""The documented "auto" rule: what a user gets for a given dataset size."""

from __future__ import annotations

import pytest

from finetune_api.hyperparameters import resolve
from finetune_api.v1alpha1.finetunejob import AdapterType, Hyperparameters, Method


@pytest.mark.parametrize(
    ("rows", "epochs", "batch_size"),
    [
        (10, 10, 1),  # tiny set: enough epochs to see 100 examples
        (20, 5, 1),
        (1_000, 3, 2),
        (20_000, 1, 32),  # big set: capped at 25,000 examples seen
        (500_000, 1, 256),  # batch capped
    ],
)
def test_auto_epochs_and_batch_size(rows: int, epochs: int, batch_size: int) -> None:
    r = resolve(Hyperparameters(), rows=rows, method=Method.SFT, adapter=AdapterType.LORA)
    assert (r.epochs, r.batch_size) == (epochs, batch_size)


def test_preference_methods_cap_batch_size() -> None:
    r = resolve(Hyperparameters(), rows=500_000, method=Method.DPO, adapter=AdapterType.LORA)
    assert r.batch_size == 64


@pytest.mark.parametrize(
    ("method", "adapter", "lr"),
    [
        (Method.SFT, AdapterType.LORA, 2e-4),
        (Method.SFT, AdapterType.FULL, 2e-5),
        (Method.DPO, AdapterType.QLORA, 5e-6),
        (Method.RFT, AdapterType.FULL, 1e-6),
    ],
)
def test_auto_learning_rate_per_method_and_adapter(method: Method, adapter: AdapterType, lr: float) -> None:
    assert resolve(
        Hyperparameters(), rows=100, method=method, adapter=adapter
    ).learning_rate == pytest.approx(lr)


def test_multiplier_scales_and_explicit_values_win() -> None:
    hp = Hyperparameters(learning_rate_multiplier=0.5, epochs=2, batch_size=8)
    r = resolve(hp, rows=100, method=Method.SFT, adapter=AdapterType.LORA)
    assert (r.epochs, r.batch_size, r.learning_rate) == (2, 8, pytest.approx(1e-4))
    explicit = resolve(
        Hyperparameters(learning_rate=3e-5), rows=100, method=Method.SFT, adapter=AdapterType.LORA
    )
    assert explicit.learning_rate == pytest.approx(3e-5)


def test_empty_dataset_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty training set"):
        resolve(Hyperparameters(), rows=0, method=Method.SFT, adapter=AdapterType.LORA)
