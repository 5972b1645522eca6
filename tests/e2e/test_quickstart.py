"""The README's first command, as a user runs it: `finetune run examples/quickstart.yaml` fine-tunes the
bundled SmolLM2-135M-Instruct on CPU, the holdout's JSON exact match goes from near zero to >= 0.7, the
EvalGate passes, and the model is published with its manifest, model card and eval report."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.support import EXAMPLES


def test_quickstart_learns_the_task(tmp_path: Path) -> None:
    finetune = Path(sys.executable).with_name("finetune")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        [str(finetune), "run", str(EXAMPLES / "quickstart.yaml"), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    job = tmp_path / "default" / "quickstart-order-json"
    (run,) = (p for p in job.iterdir() if p.name != "promoted")
    before = json.loads((run / "holdout-base.json").read_text())
    after = json.loads((run / "holdout-latest.json").read_text())
    assert before["metric"] == after["metric"] == "exact_match"
    assert before["score"] < 0.2
    assert after["score"] >= 0.7
    assert f"holdout exact match: {before['score']:.1%} before -> {after['score']:.1%} after" in result.stdout
    assert "step 12/12" in result.stdout  # the progress bar, drawn from progress.json
    assert sorted(p.parent.name for p in (run / "checkpoints").glob("*/COMPLETE")) == [
        "step-000000006",
        "step-000000012",
    ]

    # the gate, as the operator decides it, and the promoted version
    report = json.loads((run / "eval" / "report.json").read_text())
    values = {s["suite"]: s["value"] for s in report["suites"]}
    assert values["holdout-exact"] >= 0.7
    assert values["versus-base"] > 0.6  # the string_check judge prefers the tuned replies
    assert values["pii"] == values["toxicity"] == values["over-refusal"] == 0.0
    version = job / "promoted" / run.name
    manifest = json.loads((version / "MANIFEST.json").read_text())
    keys = {o["key"] for o in manifest["objects"]}
    assert {"adapter_model.safetensors", "MODEL_CARD.md", "lineage.json", "eval/report.html"} <= keys
    for entry in manifest["objects"]:
        assert hashlib.sha256((version / entry["key"]).read_bytes()).hexdigest() == entry["sha256"]
    assert f"promoted: {version} (sha256:" in result.stdout
    assert f"eval report: {version / 'eval' / 'report.html'}" in result.stdout
    assert "holdout-exact" in (version / "MODEL_CARD.md").read_text()
