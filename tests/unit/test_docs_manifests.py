"""Every ```yaml block in README.md and docs/*.md is a whole manifest that `finetune validate` accepts.

Fragments of a manifest are fenced with another language (```text), so that a ```yaml block always means
something a user can apply as it stands.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from finetune_cli.validate import validate_document
from helpers.support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def yaml_blocks(path: Path) -> list[str]:
    """The text of each ```yaml fenced block of a Markdown file, in order."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        if current is None:
            if line.strip() == "```yaml":
                current = []
        elif line.strip().startswith("```"):
            blocks.append("\n".join(current))
            current = None
        else:
            current.append(line)
    assert current is None, f"{path.name}: a ```yaml block is never closed"
    return blocks


CASES = [
    pytest.param(page, index, block, id=f"{page.relative_to(ROOT)}#{index}")
    for page in PAGES
    for index, block in enumerate(yaml_blocks(page))
]


def test_docs_exist_and_hold_manifests() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "api.md", "operator.md", "trainer.md", "evaluation.md"} <= names
    assert len(CASES) >= 4


@pytest.mark.parametrize(("page", "index", "block"), CASES)
def test_every_yaml_block_is_a_valid_manifest(page: Path, index: int, block: str) -> None:
    manifests = [m for m in yaml.safe_load_all(block) if m is not None]
    assert manifests, f"{page.name} block {index} holds no manifest"
    for manifest in manifests:
        assert isinstance(manifest, dict), f"{page.name} block {index} is not a manifest"
        assert validate_document(manifest)[2] == []
