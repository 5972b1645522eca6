"""The README's first command, as a user runs it: `finetune run examples/quickstart.yaml` fine-tunes the
bundled SmolLM2-135M-Instruct on CPU and the holdout's JSON exact match goes from near zero to >= 0.7."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import EXAMPLES


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
    (run,) = (tmp_path / "default" / "quickstart-order-json").iterdir()
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
