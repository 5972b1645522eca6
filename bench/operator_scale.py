"""Operator throughput, memory and API writes against a real kube-apiserver (not a test: `make bench`).

1. Baseline: the operator's window with a bare async client (aiohttp, no framework) in its place: N
   FineTuneJobs are applied at once, and as each is applied the client does what the operator's first
   reconcile does (create the validation Job, record the event, patch the status). That rate is the API's
   own limit on this machine. The time to apply N alone is measured too, and reported taken out of both.
2. Operator: N FineTuneJobs are created at once while `python -m finetune_operator` runs; the clock stops
   when every one has its first child Job. Reported as a ratio to the baseline (aim: 0.5x or better).
3. Writes: one job driven from apply to Succeeded (the script plays kubelet and trainer); the API server's
   audit log counts the operator's writes (create/update/patch/delete, events included).
4. Memory: the operator's peak RSS (VmHWM) with M FineTuneJobs present (aim: under 250 MB).

    BENCH_JOBS=1000 BENCH_RSS_JOBS=5000 [BENCH_PROFILE=operator.txt] python bench/operator_scale.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402

from controlplane.cluster import CRDS, running  # noqa: E402
from finetune_api.plan import RunPlan  # noqa: E402
from finetune_api.v1alpha1 import FineTuneJob  # noqa: E402
from finetune_operator.builders.workloads import validation_job  # noqa: E402
from finetune_operator.kube.client import KubeClient  # noqa: E402
from finetune_operator.settings import Settings  # noqa: E402
from helpers.kube import finished_job_status  # noqa: E402
from helpers.operator_process import OperatorProcess  # noqa: E402
from helpers.s3server import ACCESS_KEY, SECRET_KEY  # noqa: E402
from helpers.s3server import client as s3_client  # noqa: E402
from helpers.s3server import running as s3_running  # noqa: E402

CONCURRENCY = 64


def manifest(namespace: str, name: str, endpoint: str = "http://127.0.0.1:1") -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "sft-support-assistant.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": namespace}
    for key in ("evalGateRef", "outputUri", "deployment"):
        doc["spec"].pop(key)
    doc["spec"]["resources"].pop("queueName")
    doc["spec"]["storage"]["endpoint"] = endpoint
    return doc


async def gather_limited(coros: list[Any]) -> list[Any]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def run(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


async def create_jobs(kube: KubeClient, namespace: str, count: int) -> list[dict[str, Any]]:
    async def one(i: int) -> dict[str, Any]:
        body = manifest(namespace, f"bench-{i:05d}")
        url = kube._url("FineTuneJob", namespace)
        return await kube._request("create", "POST", url, body)

    return await gather_limited([one(i) for i in range(count)])


async def count_jobs(kube: KubeClient, namespace: str) -> int:
    listing = await kube._request("list", "GET", f"{kube.server}/apis/batch/v1/namespaces/{namespace}/jobs")
    return len(listing.get("items", []))


async def baseline(kube: KubeClient, namespace: str, count: int) -> tuple[float, float]:
    """The same window as the operator's run, with a bare client in the operator's place: apply `count`
    FineTuneJobs at once, and as each is applied do what the operator's first reconcile does (create the
    validation Job, record the event, patch the status). Returns (apply alone, apply + react), seconds;
    the first is measured on a separate namespace's worth of applies first."""
    settings = Settings()
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    start = time.monotonic()
    await create_jobs(kube, namespace + "-apply", count)
    apply_alone = time.monotonic() - start

    async def one(i: int) -> None:
        raw = await kube._request(
            "create", "POST", kube._url("FineTuneJob", namespace), manifest(namespace, f"bench-{i:05d}")
        )
        job = FineTuneJob.model_validate(raw)
        contract = RunPlan.of(job).validate_contract()
        await kube.create(namespace, validation_job(job, settings, contract))
        involved = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": job.metadata.name,
            "namespace": namespace,
            "uid": job.metadata.uid,
        }
        await kube.event(involved, "Normal", "ValidationRunning", "validating", now)
        await kube.patch_status(namespace, job.metadata.name, {"phase": "ValidatingData"})

    start = time.monotonic()
    await gather_limited([one(i) for i in range(count)])
    return apply_alone, time.monotonic() - start


async def operator_run(kube: KubeClient, namespace: str, count: int, timeout: float) -> float:
    start = time.monotonic()
    await create_jobs(kube, namespace, count)
    while time.monotonic() - start < timeout:
        if await count_jobs(kube, namespace) >= count:
            return time.monotonic() - start
        await asyncio.sleep(0.5)
    raise TimeoutError(
        f"the operator gave {await count_jobs(kube, namespace)} of {count} jobs a child in {timeout}s"
    )


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def rss_mib(pid: int) -> float:
    return peak_rss_mib(pid, "VmRSS")


def kubectl(plane: Any, *args: str, stdin: str | None = None) -> None:
    result = plane.kubectl(*args, stdin=stdin)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)


def create_namespace(plane: Any, namespace: str) -> None:
    """A namespace holding the Secret and ServiceAccount the example names (a job waits until both exist)."""
    kubectl(plane, "create", "namespace", namespace)
    data = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "finetune-s3", "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "finetune-trainer", "namespace": namespace},
    }
    for obj in (secret, account):
        kubectl(plane, "apply", "-f", "-", stdin=json.dumps(obj))


async def lifecycle_writes(plane: Any, kube: KubeClient, s3_endpoint: str) -> Counter[str]:
    """Drive one job to Succeeded and count the operator's writes in the audit log."""
    namespace = "bench-writes"
    create_namespace(plane, namespace)
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="finetune-staging")
    kubectl(plane, "apply", "-f", "-", stdin=json.dumps(manifest(namespace, "writes", s3_endpoint)))
    raw = await _wait_for(kube, namespace, "writes", lambda s: s.get("phase") == "ValidatingData")
    staging = f"finetune/{namespace}/writes/writes-{raw['metadata']['uid'].split('-')[0]}/"
    s3.put_object(
        Bucket="finetune-staging",
        Key=staging + "data-report.json",
        Body=b'{"passed": true, "rows": {"training": 1000}}',
    )
    await _finish(kube, namespace, "writes-validate")
    await _wait_for(kube, namespace, "writes", lambda s: s.get("phase") == "Training")
    s3.put_object(
        Bucket="finetune-staging", Key=staging + "checkpoints/step-000000010/COMPLETE", Body=b'{"step": 10}'
    )
    await _finish(kube, namespace, "writes-train-1")
    await _wait_for(kube, namespace, "writes", lambda s: s.get("phase") == "Succeeded")
    await asyncio.sleep(2)
    writes: Counter[str] = Counter()
    for line in plane.audit_log.read_text().splitlines():
        entry = json.loads(line)
        ref = entry.get("objectRef", {})
        agent = entry.get("userAgent", "")
        if ref.get("namespace") != namespace or agent.startswith(("finetune-bench", "kubectl")):
            continue  # the benchmark's own writes (it plays kubelet and user)
        sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
        writes[f"{entry['verb']} {ref.get('resource')}{sub}"] += 1
    return writes


async def _wait_for(
    kube: KubeClient, namespace: str, name: str, ok: Any, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = await kube.get("FineTuneJob", namespace, name)
        if raw and ok(raw.get("status", {})):
            return raw
        await asyncio.sleep(0.3)
    raise TimeoutError(f"{name} did not get there: {raw and raw.get('status')}")


async def _finish(kube: KubeClient, namespace: str, job: str) -> None:
    """Play the Job controller for `job` once the operator has created it."""
    url = kube._url("Job", namespace, job, "status")
    deadline = time.monotonic() + 60
    while await kube.get("Job", namespace, job) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job} never appeared")
        await asyncio.sleep(0.3)
    await kube._request(
        "patch_status", "PATCH", url, {"status": finished_job_status()}, "application/merge-patch+json"
    )


async def main() -> None:
    jobs = int(os.environ.get("BENCH_JOBS", "1000"))
    rss_jobs = int(os.environ.get("BENCH_RSS_JOBS", "5000"))
    workdir = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    with running(workdir=workdir / "kube", crds=CRDS, audit=True) as plane, s3_running(workdir / "s3") as s3:
        os.environ["KUBECONFIG"] = str(plane.kubeconfig)
        kube = KubeClient.connect(user_agent="finetune-bench")
        for namespace in ("bench-baseline", "bench-baseline-apply", "bench-operator", "bench-rss"):
            create_namespace(plane, namespace)

        apply_alone, base = await baseline(kube, "bench-baseline", jobs)
        print(
            f"apply alone           : {jobs} jobs in {apply_alone:6.1f} s = {jobs / apply_alone:6.1f} jobs/s"
        )
        print(
            f"baseline  bare client : {jobs} jobs in {base:6.1f} s = {jobs / base:6.1f} jobs/s",
            "(apply + react)",
        )

        namespaces = ("bench-operator", "bench-writes", "bench-rss")
        production = {"FINETUNE_RECONCILE_INTERVAL": "15", "FINETUNE_S3_TIMEOUT": "10"}  # not the tests' 1 s
        operator = OperatorProcess(plane.kubeconfig, workdir, namespaces, env=production)
        operator.start()
        await asyncio.sleep(5)  # started and idle: start-up is not part of the rate
        profiler = None
        if os.environ.get("BENCH_PROFILE"):  # a py-spy flame graph of the operator during the run
            assert operator.process is not None
            profiler = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "-p",
                    str(operator.process.popen.pid),
                    "-o",
                    os.environ["BENCH_PROFILE"],
                    "--format",
                    "raw",
                    "-r",
                    "50",
                ]
            )
        took = await operator_run(kube, "bench-operator", jobs, timeout=600)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait()
        print(f"operator               : {jobs} jobs in {took:6.1f} s = {jobs / took:6.1f} jobs/s")
        print(f"ratio operator/baseline: {base / took:.2f}x (aim >= 0.5x)")
        print(
            "    reacting alone (apply time taken out of both):",
            f"{(base - apply_alone) / (took - apply_alone):.2f}x",
        )

        writes = await lifecycle_writes(plane, kube, s3.endpoint)
        total = sum(writes.values())
        events = writes.get("create events", 0)
        print(f"API writes, one lifecycle apply -> Succeeded: {total} ({total - events} without events)")
        for kind, n in sorted(writes.items()):
            print(f"    {n:3d}  {kind}")

        assert operator.process is not None
        more = max(0, rss_jobs - jobs - 1)  # BENCH_RSS_JOBS present in all
        took_rss = await operator_run(kube, "bench-rss", more, timeout=1200)
        pid = operator.process.popen.pid
        await asyncio.sleep(20)
        print(
            f"operator peak RSS with {jobs + 1 + more} FineTuneJobs present:",
            f"{peak_rss_mib(pid):.0f} MiB (aim < 250)",
        )
        print(
            f"    ({more} more given their first child in {took_rss:.1f} s;",
            f"{rss_mib(pid):.0f} MiB once settled)",
        )
        operator.stop()
        await kube.close()


if __name__ == "__main__":
    asyncio.run(main())
