"""Plays the kubelet, and the EndpointSlice controller, for the Deployments of one namespace: there is no
kubelet in the test control plane, so the rollout tests run a Deployment's pods as host processes here.

Every 0.2 s, level-based, as a controller does: list the Deployments (label selector), start
`spec.replicas` pods for each from its pod template, stop the pods of a template that changed (a new
generation: Recreate, old pods first) or of a Deployment that is gone, write each Deployment's status through
the status subresource, and keep one EndpointSlice per Service whose selector matches a template's labels,
listing the ready pods only.

A pod is one process: the first container's command and args, `python` being this interpreter, with
Kubernetes' `$(VAR)` expansion, its env (`value`, `fieldRef` status.podIP / metadata.name /
metadata.namespace, `secretKeyRef`, `configMapKeyRef`) and an address of its own from
FINETUNE_NETNS_ADDRESSES (tests/gateway/netns.sh: the API server refuses loopback endpoints). It is ready once
its readinessProbe (httpGet) answers. What this kubelet cannot honour (another kind of env, no command, no
address left) is recorded as an error that `wait_ready` reports, never skipped silently.

Not honoured on purpose: restartPolicy. A container that dies stays dead, as in a long crash back-off, so
fault injection (`kill`) shows its endpoint leaving the Service.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config

from helpers.podrun import BASE_ENV, expand
from helpers.processes import Process, ProcessError, spawn

log = logging.getLogger(__name__)

MANAGED_BY = "kubelet.test.finetune.dev"
POLL = 0.2
INHERITED = ("PATH", "PYTHONPATH", "HF_HUB_OFFLINE", "OMP_WAIT_POLICY")
FIELDS = {"status.podIP", "metadata.name", "metadata.namespace"}


class KubeletError(ProcessError):
    """A pod could not be started as its template says, or did not become ready."""


def netns_addresses() -> list[str]:
    """The pod addresses tests/gateway/netns.sh put on lo (empty outside that namespace)."""
    return os.environ.get("FINETUNE_NETNS_ADDRESSES", "").split()


class _Pool:
    """Pod addresses, shared by every kubelet of the session so that two namespaces never get the same one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken: set[str] = set()

    def take(self) -> str:
        with self.lock:
            free = [a for a in netns_addresses() if a not in self.taken]
            if not free:
                raise KubeletError("no pod address left: run through tests/gateway/netns.sh (make test)")
            self.taken.add(free[0])
            return free[0]

    def give_back(self, address: str) -> None:
        with self.lock:
            self.taken.discard(address)


POOL = _Pool()


@dataclass
class Pod:
    name: str
    deployment: str
    template_hash: str
    address: str
    process: Process
    ready: bool = False

    @property
    def alive(self) -> bool:
        return self.process.popen.poll() is None


def _content(endpoint_slice: dict[str, Any]) -> tuple[object, object]:
    """What an EndpointSlice says, as comparable values (the server leaves out empty names and lists)."""
    ports = [
        (p.get("name", ""), p.get("port"), p.get("protocol", "TCP"))
        for p in endpoint_slice.get("ports") or []
    ]
    endpoints = [
        (
            tuple(e["addresses"]),
            (e.get("conditions") or {}).get("ready"),
            (e.get("targetRef") or {}).get("name"),
        )
        for e in endpoint_slice.get("endpoints") or []
    ]
    return ports, endpoints


def _empty_dirs(template: dict[str, Any], container: dict[str, Any], workdir: Path) -> Callable[[str], str]:
    """emptyDir volumes become folders of the pod; a path under a mount point in env or args is mapped into
    them (as `podrun` does for Jobs). Any other kind of volume is refused."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        if "emptyDir" not in volume:
            raise KubeletError(f"volume {mount['name']}: only emptyDir volumes are supported")
        mounts[mount["mountPath"]] = workdir / "volumes" / mount["name"]
        mounts[mount["mountPath"]].mkdir(parents=True, exist_ok=True)

    def local(value: str) -> str:
        for path in sorted(mounts, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return str(mounts[path]) + value[len(path) :]
        return value

    return local


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _port(value: int | str, container: dict[str, Any]) -> int:
    """A port given by number or by the name of one of the container's ports."""
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for port in container.get("ports", []):
        if port.get("name") == value:
            return int(port["containerPort"])
    raise KubeletError(f"container {container['name']} has no port named {value}")


class Kubelet:
    """Use as a context manager: `with Kubelet(kubeconfig, namespace, workdir) as kubelet: ...`."""

    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path, selector: str = "") -> None:
        self.namespace = namespace
        self.workdir = workdir
        self.selector = selector
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.discovery = client.DiscoveryV1Api(self.api)
        self.errors: list[str] = []
        self._pods: dict[str, list[Pod]] = {}
        self._failed: dict[str, tuple[str, str]] = {}  # deployment -> (template hash, why it could not start)
        self._status: dict[str, dict[str, Any]] = {}  # deployment uid -> the status last written
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # a long-lived thread: the pods' death signal (PR_SET_PDEATHSIG) fires when the thread that
        # started them ends
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{namespace}", daemon=True)

    # --- what tests use ---------------------------------------------------------------------------

    def __enter__(self) -> Kubelet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pods(self, deployment: str) -> list[Pod]:
        """The pods of the Deployment's current template, dead ones included."""
        with self._lock:
            return list(self._pods.get(deployment, []))

    def addresses(self, deployment: str) -> list[str]:
        return [pod.address for pod in self.pods(deployment)]

    def kill(self, deployment: str, index: int = 0) -> Pod:
        """Fault injection: SIGKILL one pod's process (it is not restarted)."""
        pod = self.pods(deployment)[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pod.process.popen.pid, signal.SIGKILL)
        pod.process.popen.wait(10)
        return pod

    def wait_ready(self, deployment: str, replicas: int, timeout: float = 60.0) -> list[Pod]:
        """Wait until the Deployment has `replicas` ready pods; fails early, with the log, if one dies or
        its template cannot be run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if deployment in self._failed:
                raise KubeletError(f"{deployment}: {self._failed[deployment][1]}")
            pods = self.pods(deployment)
            for pod in pods:
                if not pod.ready:
                    pod.process.check_alive()
            if len(pods) == replicas and all(pod.ready for pod in pods):
                return pods
            time.sleep(0.1)
        raise KubeletError(
            f"{deployment}: {replicas} ready pods not seen in {timeout:.0f}s; {self.errors[-3:]}"
        )

    def endpoints(self, service: str) -> set[str]:
        """The ready addresses of the Service's EndpointSlices, as the API server has them."""
        slices = self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={service}"
        ).items
        return {
            address
            for s in slices
            for endpoint in s.endpoints or []
            if endpoint.conditions is None or endpoint.conditions.ready is not False
            for address in endpoint.addresses
        }

    def wait_endpoints(self, service: str, addresses: set[str], timeout: float = 30.0) -> float:
        """Wait until the Service's ready endpoints are exactly `addresses`; returns the seconds it took."""
        start = time.monotonic()
        while (seen := self.endpoints(service)) != addresses:
            if time.monotonic() - start > timeout:
                raise KubeletError(f"{service}: endpoints {sorted(seen)}, not {sorted(addresses)}")
            time.sleep(0.05)
        return time.monotonic() - start

    def stop(self) -> None:
        """Stop the loop and every pod; remove the EndpointSlices it wrote (if the API server is still up)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        with self._lock:
            pods = [pod for group in self._pods.values() for pod in group]
            self._pods.clear()
        self._stop_pods(pods)
        with contextlib.suppress(Exception):
            self.discovery.delete_collection_namespaced_endpoint_slice(
                self.namespace, label_selector=f"endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
            )
        self.api.close()

    # --- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._sync()
                failures = 0
            except Exception as err:
                failures += 1
                log.exception("kubelet for namespace %s: sync failed (%d in a row)", self.namespace, failures)
                self.errors.append(f"sync: {err}")
            self._stop.wait(POLL * min(2**failures, 25))

    def _sync(self) -> None:
        serialize = self.api.sanitize_for_serialization
        deployments = [
            serialize(d)
            for d in self.apps.list_namespaced_deployment(self.namespace, label_selector=self.selector).items
        ]
        names = {d["metadata"]["name"] for d in deployments}
        for name in [n for n in self._failed if n not in names]:
            del self._failed[name]
        for name in [n for n in self._pods if n not in names]:
            with self._lock:
                gone = self._pods.pop(name)
            self._stop_pods(gone)
        for deployment in deployments:
            self._sync_pods(deployment)
        for deployment in deployments:
            self._sync_status(deployment)
        self._sync_slices(deployments)

    def _sync_pods(self, deployment: dict[str, Any]) -> None:
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        current = template_hash(template)
        pods = self.pods(name)
        stale = [p for p in pods if p.template_hash != current]
        keep = [p for p in pods if p.template_hash == current]
        wanted = deployment["spec"].get("replicas", 1)
        stale += keep[wanted:]
        keep = keep[:wanted]
        if stale:
            with self._lock:
                self._pods[name] = keep
            self._stop_pods(stale)
        if self._failed.get(name, (current,))[0] != current:
            del self._failed[name]  # a new template: try again
        if name not in self._failed:
            try:
                while len(keep) < wanted:
                    keep.append(self._start_pod(name, current, template))
                    with self._lock:
                        self._pods[name] = list(keep)
            except Exception as err:
                self._failed[name] = (current, str(err))
                self.errors.append(f"{name}: {err}")
                log.error("kubelet: deployment %s/%s: %s", self.namespace, name, err)
        for pod in keep:
            if not pod.alive:
                pod.ready = False
            elif not pod.ready:
                pod.ready = self._probe(pod, template["spec"]["containers"][0])

    def _start_pod(self, deployment: str, hash_: str, template: dict[str, Any]) -> Pod:
        container = template["spec"]["containers"][0]
        pod_name = f"{deployment}-{hash_}-{uuid.uuid4().hex[:5]}"
        address = POOL.take()
        try:
            workdir = self.workdir / pod_name
            workdir.mkdir(parents=True)
            local = _empty_dirs(template, container, workdir)
            env = {key: local(value) for key, value in self._env(container, pod_name, address).items()}
            if not container.get("command"):
                raise KubeletError(
                    f"container {container['name']}: no command (there is no image entrypoint)"
                )
            argv = [local(expand(arg, env)) for arg in container["command"] + container.get("args", [])]
            if argv[0] in {"python", "python3"}:
                argv[0] = sys.executable
            process = spawn(pod_name, argv, workdir, env)
        except BaseException:
            POOL.give_back(address)
            raise
        log.info("kubelet: started %s/%s on %s: %s", self.namespace, pod_name, address, argv)
        return Pod(pod_name, deployment, hash_, address, process)

    def _env(self, container: dict[str, Any], pod_name: str, address: str) -> dict[str, str]:
        env = {key: os.environ[key] for key in INHERITED if key in os.environ}
        env.update(BASE_ENV)
        fields = {"status.podIP": address, "metadata.name": pod_name, "metadata.namespace": self.namespace}
        if container.get("envFrom"):
            raise KubeletError(f"container {container['name']}: envFrom is not supported")
        for var in container.get("env", []):
            source = var.get("valueFrom")
            if source is None:
                env[var["name"]] = expand(var.get("value", ""), env)
            elif "fieldRef" in source and source["fieldRef"]["fieldPath"] in FIELDS:
                env[var["name"]] = fields[source["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                data = self.core.read_namespaced_secret(ref["name"], self.namespace).data or {}
                env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                data = self.core.read_namespaced_config_map(ref["name"], self.namespace).data or {}
                env[var["name"]] = data[ref["key"]]
            else:
                raise KubeletError(f"env {var['name']}: unsupported source {source}")
        return env

    def _probe(self, pod: Pod, container: dict[str, Any]) -> bool:
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        if probe is None:
            return True
        url = f"http://{pod.address}:{_port(probe['port'], container)}{probe.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(200 <= response.status < 400)
        except OSError:
            return False

    def _stop_pods(self, pods: list[Pod]) -> None:
        for pod in pods:
            pod.ready = False
            pod.process.stop(timeout=5)
            POOL.give_back(pod.address)
            log.info("kubelet: stopped %s/%s", self.namespace, pod.name)

    def _sync_status(self, deployment: dict[str, Any]) -> None:
        meta = deployment["metadata"]
        pods = self.pods(meta["name"])
        wanted = deployment["spec"].get("replicas", 1)
        ready = sum(pod.ready for pod in pods)
        available = ready >= wanted
        status: dict[str, Any] = {
            "observedGeneration": meta["generation"],
            "replicas": len(pods),
            "updatedReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(wanted - ready, 0),
            "conditions": [
                {
                    "type": "Available",
                    "status": str(available),
                    "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                    "message": f"{ready} of {wanted} replicas ready",
                }
            ],
        }
        if self._status.get(meta["uid"]) == status:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        stamped = {**status, "conditions": [{**c, "lastUpdateTime": now} for c in status["conditions"]]}
        self.apps.patch_namespaced_deployment_status(meta["name"], self.namespace, {"status": stamped})
        log.info("kubelet: status of %s/%s: %d of %d ready", self.namespace, meta["name"], ready, wanted)
        self._status[meta["uid"]] = status

    def _sync_slices(self, deployments: list[dict[str, Any]]) -> None:
        serialize = self.api.sanitize_for_serialization
        wanted: dict[str, dict[str, Any]] = {}
        for service in map(serialize, self.core.list_namespaced_service(self.namespace).items):
            selector = service["spec"].get("selector") or {}
            matching = [
                d
                for d in deployments
                if selector
                and selector.items() <= (d["spec"]["template"]["metadata"].get("labels") or {}).items()
            ]
            if matching:
                wanted[f"{service['metadata']['name']}-kubelet"] = self._slice(service, matching)
        existing = {
            s["metadata"]["name"]: s
            for s in map(
                serialize,
                self.discovery.list_namespaced_endpoint_slice(
                    self.namespace, label_selector=f"endpointslice.kubernetes.io/managed-by={MANAGED_BY}"
                ).items,
            )
        }
        for name, body in wanted.items():
            if name not in existing:
                self.discovery.create_namespaced_endpoint_slice(self.namespace, body)
                log.info("kubelet: created EndpointSlice %s/%s", self.namespace, name)
            elif _content(existing[name]) != _content(body):
                self.discovery.patch_namespaced_endpoint_slice(
                    name, self.namespace, {"endpoints": body["endpoints"], "ports": body["ports"]}
                )
                log.info("kubelet: updated EndpointSlice %s/%s", self.namespace, name)
        for name in existing.keys() - wanted.keys():
            self.discovery.delete_namespaced_endpoint_slice(name, self.namespace)
            log.info("kubelet: deleted EndpointSlice %s/%s", self.namespace, name)

    def _slice(self, service: dict[str, Any], deployments: list[dict[str, Any]]) -> dict[str, Any]:
        container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
        ports = [
            {
                "name": port.get("name", ""),
                "port": _port(port.get("targetPort", port["port"]), container),
                "protocol": port.get("protocol", "TCP"),
            }
            for port in service["spec"].get("ports") or []
        ]
        endpoints = [
            {
                "addresses": [pod.address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "name": pod.name, "namespace": self.namespace},
            }
            for d in deployments
            for pod in self.pods(d["metadata"]["name"])
            if pod.ready
        ]
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service['metadata']['name']}-kubelet",
                "labels": {
                    "kubernetes.io/service-name": service["metadata"]["name"],
                    "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                },
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }
