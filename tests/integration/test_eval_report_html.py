"""The HTML eval report in a real browser: Debian's headless Chromium, driven by Playwright.

A reviewer reads this page before approving a model, and it shows model outputs, which are untrusted. So the
checks are the ones a person would make by looking: the verdict is shown in its colour, the metric table and
the side-by-side samples are laid out and visible, the page is not blank (a screenshot has many colours), and
a reply that holds a script is shown as text and never runs. Chromium comes from `make chromium`; a missing
browser fails the test, it never skips it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from finetune_api.gate import EvalReport, SuiteOutcome, decide
from finetune_api.v1alpha1.evalgate import EvalGateSpec
from finetune_api.v1alpha1.finetunejob import GateResult, MetricResult
from finetune_trainer.evaluation.report import VERDICT_COLOURS, render_html

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")  # the browser is Debian's, never a download
CHROMIUM = Path("/usr/bin/chromium")
SCRIPT = "<script>alert(1)</script>"
IMAGE = '<img src=x onerror="alert(2)">'
JUDGE = {
    "type": "string_check",
    "name": "same",
    "input": "{{sample.output_text}}",
    "reference": "x",
    "operation": "eq",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium) first")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


def gate_and_report() -> tuple[GateResult, EvalReport]:
    """A real decision: `task` and `wins` pass, `toxic` fails its threshold and its no-regression check
    (the only suite compared: five rows could not show `task` non-inferior)."""
    spec = EvalGateSpec.model_validate(
        {
            "suites": [
                suite("task", "exact_match", {"min": 0.5}),
                suite("toxic", "toxicity_rate", {"max": 0.05}),
                suite("wins", "win_rate", {"min": 0.5}, judge=JUDGE),
            ],
            "noRegression": {"suites": ["toxic"]},
        }
    )
    report = EvalReport(
        checkpoint="s3://staging/ml-platform/support/run-1/checkpoints/step-000000012/",
        baseline_model="s3://models/smollm2-135m-instruct/",
        suites=[
            outcome("task", "exact_match", [1, 1, 0, 1, 1], [0, 1, 0, 0, 1]),
            outcome(
                "toxic",
                "toxicity_rate",
                [1, 1, 0, 1, 1],
                [0, 0, 0, 0, 0],
                scorer="alt-profanity-check 1.9.1 (calibrated linear SVM, TF-IDF)",
            ),
            outcome("wins", "win_rate", [1, 1, 0, 1, 0.5]),
        ],
        seconds=42.0,
    )
    return decide(spec, report), report


def suite(name: str, metric: str, threshold: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {"name": name, "dataset": {"uri": f"s3://evals/{name}.jsonl"}, "metric": metric} | {
        "threshold": threshold,
        **extra,
    }


def outcome(
    name: str, metric: str, cand: list[float], base: list[float] | None = None, **kw: Any
) -> SuiteOutcome:
    fields: dict[str, Any] = {"suite": name, "metric": metric, "value": sum(cand) / len(cand), "scores": cand}
    if base is not None:
        fields |= {"baseline": sum(base) / len(base), "baseline_scores": base}
    return SuiteOutcome.model_validate(fields | {"rows": len(cand)} | kw)


def examples() -> list[dict[str, Any]]:
    """Five records per suite, out of order; in `task` only indices 1, 2 and 4 differ from the baseline."""
    records = []
    for name in ("wins", "toxic", "task"):
        for index in (4, 0, 3, 1, 2):
            same = name == "task" and index in (0, 3)
            candidate = f"{name} candidate reply {index}"
            records.append(
                {
                    "suite": name,
                    "metric": "m",
                    "index": index,
                    "prompt": f'user: question {index} with "quotes" & <b>tags</b>',
                    "candidate": candidate,
                    "baseline": candidate if same else f"{name} baseline reply {index}",
                    "reference": f"reference {index}" if name == "task" else None,
                    "score": 1.0,
                    "baseline_score": 0.0,
                    "details": {"why": "<i>judged</i>"},
                }
            )
    injected = next(r for r in records if r["suite"] == "wins" and r["index"] == 0)
    injected |= {"candidate": f"Sure! {SCRIPT}", "baseline": f"No. {IMAGE}"}
    return records


def open_page(browser: Browser, tmp_path: Path, html: str) -> tuple[Page, list[str]]:
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(path.as_uri())
    return page, dialogs


def visible_box(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not rendered"
    assert box["width"] > 0, f"{selector} has no width: {box}"
    assert box["height"] > 0, f"{selector} has no height: {box}"
    return box


def test_report_shows_verdict_metrics_and_samples_and_runs_no_model_output(
    browser: Browser, tmp_path: Path
) -> None:
    gate, report = gate_and_report()
    assert gate.verdict == "Failed"
    failing = [m for m in gate.metrics if not m.passed]
    assert [m.suite for m in failing] == ["toxic", "toxic"]
    html = render_html(
        report,
        gate,
        examples(),
        title="support-assistant-sft run-1",
        candidate="s3://staging/run-1/checkpoints/step-000000012/",
        baseline="s3://models/smollm2-135m-instruct/",
        samples_per_suite=3,
    )
    assert SCRIPT not in html
    assert IMAGE not in html
    page, dialogs = open_page(browser, tmp_path, html)
    try:
        assert page.locator("#verdict").inner_text() == "Failed"
        assert "verdict-failed" in (page.locator("#verdict").get_attribute("class") or "")
        visible_box(page, "#verdict")
        assert page.locator("#candidate").inner_text() == "s3://staging/run-1/checkpoints/step-000000012/"
        assert page.locator("#baseline").inner_text() == "s3://models/smollm2-135m-instruct/"

        visible_box(page, "table#metrics")
        assert page.locator("table#metrics tbody tr.metric").count() == len(gate.metrics)
        assert page.locator("table#metrics tr.metric.failed").count() == len(failing)
        assert page.locator('tr.metric.failed[data-suite="toxic"]').count() == 2

        sections = page.locator("section.samples")
        assert sections.count() == 3
        for name in ("task", "toxic", "wins"):
            visible_box(page, f"section.samples#samples-{name}")
            assert page.locator(f"#samples-{name} article.sample").count() == 3
        shown = page.locator("#samples-task article.sample")
        assert [shown.nth(i).get_attribute("data-index") for i in range(3)] == ["1", "2", "4"]
        assert page.locator("#samples-task .reference").first.inner_text() == "reference 1"

        # Side by side: the candidate's column left of the baseline's, on the same line.
        candidate = visible_box(page, "#samples-wins article.sample >> nth=0 >> .reply.candidate")
        baseline = visible_box(page, "#samples-wins article.sample >> nth=0 >> .reply.baseline")
        assert candidate["x"] + candidate["width"] <= baseline["x"]
        assert abs(candidate["y"] - baseline["y"]) < 2

        # The injected markup is shown as text, and nothing ran or loaded.
        assert SCRIPT in page.locator("#samples-wins .reply.candidate pre").first.inner_text()
        assert IMAGE in page.locator("#samples-wins .reply.baseline pre").first.inner_text()
        assert "<b>tags</b>" in page.locator("#samples-task .prompt").first.inner_text()
        assert (
            page.evaluate("document.querySelectorAll('script, img, iframe, object, embed, b, i').length") == 0
        )
        assert dialogs == []

        screenshot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        colours = screenshot.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 32, f"the page looks blank: {len(colours)} colours"
        assert dominant(page, "#verdict") == rgb(VERDICT_COLOURS["Failed"])
    finally:
        page.close()


@pytest.mark.parametrize("verdict", ["Passed", "Error"])
def test_verdict_is_colour_coded(browser: Browser, tmp_path: Path, verdict: str) -> None:
    metric = MetricResult(suite="task", metric="exact_match", value=0.9, passed=verdict == "Passed")
    gate = GateResult(verdict=verdict, metrics=[metric])  # type: ignore[arg-type]
    report = EvalReport(error=None if verdict == "Passed" else "the evaluate pod ran out of memory")
    html = render_html(report, gate, [], title="t", candidate="c", baseline=None)
    page, _ = open_page(browser, tmp_path, html)
    try:
        assert page.locator("#verdict").inner_text() == verdict
        assert dominant(page, "#verdict") == rgb(VERDICT_COLOURS[verdict])
        assert page.locator("#baseline").inner_text() == "none"
        assert page.locator("#report-error").count() == (verdict == "Error")
        assert "no examples recorded" in page.locator("#samples-task").inner_text()
    finally:
        page.close()


def dominant(page: Page, selector: str) -> tuple[int, int, int]:
    """The most common colour in a screenshot of the element: its background, under its text."""
    image = Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB")
    counts = image.getcolors(maxcolors=1 << 20) or []
    _, colour = max(counts)
    return colour


def rgb(hex_colour: str) -> tuple[int, int, int]:
    value = int(hex_colour.lstrip("#"), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255
