"""Helpers shared by the tests: repository paths and the invalid-manifest corpus."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRDS = ROOT / "crds"
CORPUS = ROOT / "tests" / "manifests" / "invalid.yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: mappings merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


@dataclass(frozen=True)
class InvalidCase:
    name: str
    manifest: dict[str, Any]
    expect: str
    expect_message: str | None = None


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def example_documents() -> list[dict[str, Any]]:
    """Every resource in every example file (a file may hold a FineTuneJob and its EvalGate)."""
    return [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def invalid_cases() -> list[InvalidCase]:
    return [
        InvalidCase(
            c["name"], merge_patch(example(c["base"]), c["patch"]), c["expect"], c.get("expect_message")
        )
        for c in yaml.safe_load(CORPUS.read_text())
    ]


def eventually(probe: Callable[[], Any], timeout: float = 60.0, message: str = "") -> Any:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(message or f"condition not met within {timeout:.0f}s")


def paired_scores(value: float, baseline: float, rows: int = 1000) -> tuple[list[float], list[float]]:
    """Per-example 0/1 scores of a candidate and a baseline on the same `rows` rows, with means `value` and
    `baseline`, agreeing wherever they can: enough rows for a non-inferiority check to show a difference
    within a 1% tolerance."""
    ones, base_ones = round(value * rows), round(baseline * rows)
    return [1.0] * ones + [0.0] * (rows - ones), [1.0] * base_ones + [0.0] * (rows - base_ones)
