"""`finetune validate`: every example passes, every invalid manifest is refused naming its field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune_cli.validate import validate_document
from helpers.support import EXAMPLES, ROOT, example_documents, invalid_cases

CASES = invalid_cases()


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    finetune = Path(sys.executable).parent / "finetune"
    return subprocess.run(
        [str(finetune), "validate", *args], capture_output=True, text=True, input=stdin, cwd=ROOT, check=False
    )


def test_every_example_is_valid() -> None:
    result = run_cli("examples/")
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    for name in files:
        assert f"examples/{name}: " in result.stdout
        assert result.stdout.count("valid") >= len(files)


def test_examples_cover_every_method_and_an_evalgate() -> None:
    docs = example_documents()
    methods = {d["spec"]["method"] for d in docs if d["kind"] == "FineTuneJob"}
    assert methods == {"sft", "vision", "dpo", "rft"}
    assert any(d["kind"] == "EvalGate" for d in docs)


def test_examples_hold_a_deployment_that_a_job_rolls_out_to() -> None:
    docs = example_documents()
    deployments = {
        (d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "ModelDeployment"
    }
    named = {
        (d["metadata"]["namespace"], d["spec"]["deployment"]["name"])
        for d in docs
        if d["kind"] == "FineTuneJob" and "deployment" in d["spec"]
    }
    assert deployments
    assert named
    assert named <= deployments, "a job names a ModelDeployment that no example defines"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_invalid_manifest_is_rejected_naming_the_field(case) -> None:
    _, _, problems = validate_document(case.manifest)
    lines = [str(p) for p in problems]
    assert lines, f"{case.name} was accepted"
    assert any(case.expect in line for line in lines), f"no problem names {case.expect}: {lines}"
    if case.expect_message:
        assert f"{case.expect}: {case.expect_message}" in lines
    assert not any("should match" in line for line in lines), "a format error prints its regular expression"


def test_cli_prints_every_problem_with_file_and_path_and_exits_1(tmp_path: Path) -> None:
    bad = CASES[0].manifest | {"spec": CASES[0].manifest["spec"] | {"method": "ppo", "suspend": "maybe"}}
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump_all([bad, yaml.safe_load((EXAMPLES / "dpo-helpfulness.yaml").read_text())])
    )
    result = run_cli(str(path))
    assert result.returncode == 1
    assert f"{path}: FineTuneJob/support-assistant-sft: spec.method: Input should be" in result.stderr
    assert f"{path}: FineTuneJob/support-assistant-sft: spec.suspend:" in result.stderr
    assert f"{path}: FineTuneJob/assistant-dpo: valid" in result.stdout
    assert "1 of 2 manifests invalid" in result.stderr


def test_cli_reports_unreadable_and_non_manifest_input(tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    (tmp_path / "broken.yaml").write_text("spec: [unclosed\n")
    result = run_cli(
        str(tmp_path / "list.yaml"), str(tmp_path / "broken.yaml"), str(tmp_path / "missing.yaml")
    )
    assert result.returncode == 1
    assert "a manifest must be a mapping" in result.stderr
    assert "not valid YAML" in result.stderr
    assert "missing.yaml: cannot read" in result.stderr


def test_cli_reads_stdin() -> None:
    text = (
        (EXAMPLES / "rft-math-grader.yaml")
        .read_text()
        .replace("generationsPerPrompt: 8", "generationsPerPrompt: 1")
    )
    result = run_cli("-", stdin=text)
    assert result.returncode == 1
    assert "spec.rft.generationsPerPrompt: Input should be greater than or equal to 2" in result.stderr


def test_unknown_kind_is_named() -> None:
    _, _, problems = validate_document(
        {"apiVersion": "finetune.dev/v1alpha1", "kind": "TrainJob", "spec": {}}
    )
    assert [str(p) for p in problems] == [
        "kind: must be one of EvalGate, FineTuneJob, ModelDeployment, got 'TrainJob'"
    ]


def test_readme_manifests_are_valid() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    manifests = [yaml.safe_load(b) for b in blocks]
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == ["EvalGate", "FineTuneJob"]
    for manifest in manifests:
        assert validate_document(manifest)[2] == []


@pytest.mark.parametrize(
    ("suite", "problem"),
    [
        ({"metric": "exact_match", "threshold": {"min": 0.5}}, "generation.temperature > 0"),
        ({"metric": "exact_match", "threshold": {"min": 0.5}, "generation": {"temperature": 0.0}}, "> 0"),
        ({"metric": "exact_match", "threshold": {"min": 0.5}, "generation": {"temperature": 0.7}}, None),
        ({"metric": "eval_loss", "threshold": {"max": 2.0}}, None),  # scored on the labels: nothing sampled
    ],
)
def test_seeds_need_sampling_in_every_suite_that_generates(
    suite: dict[str, object], problem: str | None
) -> None:
    gate = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "EvalGate",
        "metadata": {"name": "g", "namespace": "ml"},
        "spec": {
            "suites": [{"name": "s", "dataset": {"uri": "s3://datasets/x.jsonl"}, **suite}],
            "seeds": [1, 2],
        },
    }
    found = [str(p) for p in validate_document(gate)[2]]
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1
        assert found[0].startswith("spec.seeds:")
        assert problem in found[0]
