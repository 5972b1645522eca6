"""The images' OCI labels say what pyproject.toml says (hadolint, in `make lint`, requires them)."""

from __future__ import annotations

import tomllib

import pytest

from helpers.images import labels
from helpers.support import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize(
    ("dockerfile", "title"),
    [("operator/Dockerfile", "finetune-operator"), ("trainer_image/Dockerfile", "finetune-trainer")],
)
def test_image_labels_name_the_project_version_and_licence(dockerfile: str, title: str) -> None:
    found = labels(dockerfile)
    assert found["org.opencontainers.image.title"] == title
    assert found["org.opencontainers.image.version"] == PROJECT["version"]
    assert found["org.opencontainers.image.licenses"] == PROJECT["license"]
    assert found["org.opencontainers.image.source"] == dockerfile
