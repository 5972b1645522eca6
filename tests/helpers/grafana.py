"""The chart's Grafana dashboard (helm/finetune-operator/files/dashboard.json) as the tests see it: its panels
and queries, a type check against Grafana's own schema (tests/grafana: @grafana/schema and tsc from npm,
cached outside the repository by tests/grafana/install.sh), its PromQL turned into recording rules for
`promtool check rules`, and the metric names docs/metrics.md documents.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from helpers.support import ROOT

DASHBOARD = ROOT / "helm" / "finetune-operator" / "files" / "dashboard.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
SCHEMA = ROOT / "tests" / "grafana"

# What Grafana puts in place of its variables before a query reaches Prometheus; the job variables take a
# multi-value selection, which Grafana writes as a regex alternation.
SUBSTITUTES = {
    "$__rate_interval": "1m",
    "$__interval": "30s",
    "$__range": "6h",
    "${namespace}": "(team-a|team-b)",
    "$namespace": "(team-a|team-b)",
    "${finetunejob}": "(sft-a|dpo-b)",
    "$finetunejob": "(sft-a|dpo-b)",
}
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\bfinetune_[a-z0-9_]+\b")


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


@dataclass(frozen=True)
class Query:
    row: str
    panel: str
    ref: str
    expr: str


def panels(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every panel that is not a row, with the title of the row it sits under (a collapsed row holds its
    panels; an expanded row is followed by them)."""
    row = ""
    for panel in dashboard.get("panels", []):
        if panel["type"] == "row":
            row = panel.get("title", "")
            for inner in panel.get("panels", []):
                yield row, inner
        else:
            yield row, panel


def queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(row, panel["title"], target["refId"], target["expr"])
        for row, panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str, overrides: dict[str, str] | None = None) -> str:
    """The query Grafana sends: its variables replaced by SUBSTITUTES, updated with `overrides`."""
    values = {**SUBSTITUTES, **(overrides or {})}
    # Longest names first: `$__rate_interval` before `$__range`, `${namespace}` before `$namespace`.
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    return expr


def recording_rules(found: list[Query]) -> str:
    """One rule group per panel, named after its title, so promtool's error names the panel."""
    groups: dict[str, list[dict[str, str]]] = {}
    for index, query in enumerate(found):
        rules = groups.setdefault(f"{query.row} / {query.panel}", [])
        rules.append({"record": f"dashboard:query_{index}:{query.ref}", "expr": substitute(query.expr)})
    return yaml.safe_dump({"groups": [{"name": name, "rules": rules} for name, rules in groups.items()]})


def documented_metrics(markdown: str) -> set[str]:
    """The metric names in the first column of docs/metrics.md's tables; a histogram's series are
    `_bucket`, `_sum` and `_count` (the base name is no series of its own)."""
    names: set[str] = set()
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not re.fullmatch(r"`[a-z_:][a-z0-9_:]*`", cells[0]):
            continue
        name, kind = cells[0].strip("`"), cells[1]
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SERIES)
        else:
            names.add(name)
    return names


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


# --- Grafana's schema ----------------------------------------------------------------------------------

TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "target": "es2022",
        "module": "esnext",
        "moduleResolution": "bundler",
        "skipLibCheck": True,
        "types": [],
    }
}
TSC_ERROR = re.compile(r"^(?P<file>[\w.-]+\.ts)\((?P<line>\d+),(?P<col>\d+)\): error (?P<message>.*)$")


@functools.cache
def schema_packages() -> Path:
    """The directory holding node_modules with @grafana/schema and tsc (installed once per machine)."""
    result = subprocess.run(["bash", str(SCHEMA / "install.sh")], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"installing the Grafana schema packages failed:\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


def typecheck(dashboards: dict[str, dict[str, Any]], workdir: Path) -> tuple[dict[str, list[str]], str]:
    """Type-checks each dashboard (by name) as an object literal of tests/grafana/dashboard.ts's `Board`,
    all in one `tsc --noEmit --strict` run. The literal starts on line 1, so an error's line is the line
    of the dashboard written with `json.dumps(indent=2)`. Returns the errors per name, and tsc's output."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "board.ts").write_text((SCHEMA / "dashboard.ts").read_text())
    modules = workdir / "node_modules"
    if not modules.exists():
        modules.symlink_to(schema_packages() / "node_modules", target_is_directory=True)
    files = []
    for name, dashboard in dashboards.items():
        file = f"{name}.ts"
        (workdir / file).write_text(
            "import type { Board } from './board'; export const dashboard: Board = "
            + json.dumps(dashboard, indent=2)
            + ";\n"
        )
        files.append(file)
    (workdir / "tsconfig.json").write_text(json.dumps({**TSCONFIG, "files": files}))
    result = subprocess.run(
        [str(modules / ".bin" / "tsc"), "--project", ".", "--pretty", "false"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    errors: dict[str, list[str]] = {name: [] for name in dashboards}
    for line in result.stdout.splitlines():
        match = TSC_ERROR.match(line)
        if match:
            name = match["file"].removesuffix(".ts")
            if name not in errors:  # the types themselves no longer compile (a package changed)
                raise RuntimeError(f"tests/grafana/dashboard.ts does not compile:\n{result.stdout}")
            errors[name].append(f"line {match['line']}: {match['message']}")
    if result.returncode not in (0, 2) or (result.returncode == 2 and not any(errors.values())):
        raise RuntimeError(f"tsc failed without a type error:\n{result.stdout}\n{result.stderr}")
    return errors, result.stdout
