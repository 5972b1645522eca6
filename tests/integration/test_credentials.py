"""The operator authenticates as kubectl does, without the Kubernetes Python client: kubeconfigs with file
paths or inline data reach the real API server; plugins it cannot run are refused by name."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest
import yaml

from finetune_operator.kube.client import KubeClient
from finetune_operator.kube.credentials import CredentialsError, from_kubeconfig
from helpers.kube import Cluster


def _inline(kubeconfig: Path, out: Path) -> Path:
    """The same kubeconfig with every file embedded as base64 data, as cloud providers hand them out."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    for section, key in (
        (cluster, "certificate-authority"),
        (user, "client-certificate"),
        (user, "client-key"),
    ):
        section[f"{key}-data"] = base64.b64encode(Path(section.pop(key)).read_bytes()).decode()
    out.write_text(yaml.safe_dump(config))
    return out


async def _namespaces(monkeypatch: pytest.MonkeyPatch, kubeconfig: Path) -> list[str]:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    kube = KubeClient.connect()
    try:
        listing = await kube._request("list", "GET", f"{kube.server}/api/v1/namespaces")
    finally:
        await kube.close()
    return [item["metadata"]["name"] for item in listing["items"]]


def test_paths_and_inline_data_both_authenticate(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig = cluster.plane.kubeconfig
    assert "kube-system" in asyncio.run(_namespaces(monkeypatch, kubeconfig))
    inline = _inline(kubeconfig, tmp_path / "inline")
    assert "kube-system" in asyncio.run(_namespaces(monkeypatch, inline))


def test_plugins_and_missing_entries_are_refused_by_name(tmp_path: Path) -> None:
    config = {
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "sso", "user": {"exec": {"command": "aws"}}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "sso"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CredentialsError, match="'sso' needs an exec/auth-provider plugin"):
        from_kubeconfig(path)
    config["current-context"] = "gone"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CredentialsError, match="no context named 'gone'"):
        from_kubeconfig(path)
    with pytest.raises(CredentialsError, match="no kubeconfig at"):
        from_kubeconfig(tmp_path / "absent")
