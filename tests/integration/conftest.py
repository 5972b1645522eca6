"""Session fixtures that run a real control plane (tests/controlplane) with the generated CRDs applied."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.datagen import chat_rows
from helpers.kube import Cluster, running_cluster
from helpers.operator_process import OperatorProcess
from helpers.s3server import S3Server
from helpers.s3server import running as s3_running
from helpers.scenario import Scenario, new_scenario
from helpers.tinymodels import causal_lm


def _start(tmp: Path, *, with_controllers: bool) -> Iterator[Cluster]:
    with running_cluster(tmp, with_controllers=with_controllers) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """kube-apiserver + etcd: validation, storage, watches, the Table API."""
    yield from _start(tmp_path_factory.mktemp("kube"), with_controllers=False)


@pytest.fixture(scope="session")
def cluster_with_controllers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The same plus kube-controller-manager: Jobs create Pods, owner references garbage-collect."""
    yield from _start(tmp_path_factory.mktemp("kube-cm"), with_controllers=True)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) with the test credentials."""
    with s3_running(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (tests/tinymodels) whose tokenizer knows the words of the generated chat rows."""
    corpus = [m["content"] for row in chat_rows(300) for m in row["messages"]]
    return causal_lm(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(
        cluster.plane.kubeconfig, workdir, (), {"FINETUNE_CLEANUP_DEADLINE": "4"}
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def scenario(cluster: Cluster, s3: S3Server, operator: OperatorProcess) -> Scenario:
    """A fresh namespace for one FineTuneJob, with the operator (one per test module) running."""
    return new_scenario(cluster, s3)
