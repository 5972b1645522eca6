"""docs/helm.md documents every value of the chart, and nothing the chart does not have."""

from __future__ import annotations

import re
from typing import Any

import yaml

from helpers.support import ROOT

CHART = ROOT / "helm" / "finetune-operator"
# values documented as a whole rather than field by field
WHOLE = {"resources", "monitoring.dashboard.labels"}


def leaves(values: dict[str, Any], prefix: str = "") -> set[str]:
    found: set[str] = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in WHOLE:
            found |= leaves(value, f"{path}.")
        else:
            found.add(path)
    return found


def test_the_values_table_lists_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    table = (ROOT / "docs" / "helm.md").read_text().split("## Values", 1)[1]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE))
    assert documented == leaves(values)
