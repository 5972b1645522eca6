"""Envoy Gateway v1.9.1 as a host process against the test control plane (see
/work/shared/rollout-testbed/README.md for the probe this follows): it reads GatewayClass, Gateway,
HTTPRoute, Service and EndpointSlice from the API server and runs Envoy itself as a host process.

Built by tests/gateway/build.sh (cached outside the repository), whose Envoy Gateway reads its own TLS
material from `certs/` under its working directory instead of `/certs`: each server here runs in its own
home, with that folder filled from `envoy-gateway certgen --local`. Its ports are fixed (8081, 9443, 18000,
and Envoy's admin port): one instance per network namespace (tests/gateway/netns.sh).

In host mode the Gateway never reports Programmed (no address is assigned): `wait_route` waits on the
HTTPRoute's Accepted and ResolvedRefs conditions and on a request through the listener instead.
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from helpers.kube import Cluster
from helpers.processes import Process, ProcessError, spawn
from helpers.support import ROOT

BUILD_SCRIPT = ROOT / "tests" / "gateway" / "build.sh"
ENVOY_VERSION = "1.39.1"
CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
SYSTEM_NAMESPACE = "envoy-gateway-system"
READY_TIMEOUT = 120.0


class GatewayError(ProcessError):
    pass


@functools.cache
def build() -> Path:
    """Build Envoy Gateway (or find it in the cache); returns the directory with `envoy-gateway`, `envoy`
    and `crds/`."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise GatewayError(f"building Envoy Gateway failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def config(home: Path) -> dict[str, Any]:
    """Envoy Gateway's configuration: resources from Kubernetes (no leader election), Envoy as a host process
    with the pinned version (else it would download one), every folder under `home`."""
    return {
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "EnvoyGateway",
        "gateway": {"controllerName": CONTROLLER},
        "provider": {
            "type": "Custom",
            "custom": {
                "resource": {"type": "Kubernetes", "kubernetes": {"leaderElection": {"disable": True}}},
                "infrastructure": {
                    "type": "Host",
                    "host": {
                        "configHome": str(home / "config"),
                        "dataHome": str(home / "data"),
                        "stateHome": str(home / "state"),
                        "runtimeDir": str(home / "run"),
                    },
                },
            },
        },
        "logging": {"level": {"default": "info"}},
        "envoyProxy": {"provider": {"type": "Host", "host": {"envoyVersion": ENVOY_VERSION}}},
    }


def _secret(name: str, data: dict[str, bytes], type_: str = "Opaque") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE},
        "type": type_,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


class EnvoyGateway:
    """Use as a context manager: `with EnvoyGateway(cluster, home) as eg: ...`; `started_in` says how long
    CRDs, certificates and the server took until it answered its health check, `crds_in` the CRDs alone."""

    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.cluster = cluster
        self.home = home
        self.process: Process | None = None
        self.started_in = 0.0
        self.crds_in = 0.0

    @property
    def log(self) -> Path:
        return self.home / "envoy-gateway.log"

    def __enter__(self) -> EnvoyGateway:
        start = time.monotonic()
        try:
            self._start(build())
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - start
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, built: Path) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        plane = self.cluster.plane
        start = time.monotonic()
        plane.apply_crds(built / "crds" / "gatewayapi-crds.yaml")
        plane.apply_crds(built / "crds" / "generated")
        self.crds_in = time.monotonic() - start
        server = str(built / "envoy-gateway")
        certgen = subprocess.run(
            [server, "certgen", "--local", "--config-home", str(self.home / "config")],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if certgen.returncode != 0:
            raise GatewayError(f"envoy-gateway certgen failed:\n{certgen.stdout}\n{certgen.stderr}")
        certs = self.home / "config" / "certs"
        # The server's own TLS, read from `certs/` under its working directory with a Kubernetes resource
        # provider: the patched "/certs" constants of internal/xds/runner (xDS), internal/gatewayapi/runner
        # (its Wasm file server, which takes its salt from the Secret envoy-oidc-hmac below) and
        # internal/provider/kubernetes (the webhook server's folder).
        shutil.copytree(certs / "envoy-gateway", self.home / "certs")
        secrets = [
            _secret("envoy", self._tls(certs / "envoy"), "kubernetes.io/tls"),
            _secret("envoy-gateway", self._tls(certs / "envoy-gateway"), "kubernetes.io/tls"),
            _secret(
                "envoy-oidc-hmac", {"hmac-secret": (certs / "envoy-oidc-hmac" / "hmac-secret").read_bytes()}
            ),
        ]
        self.cluster.kubectl("create", "namespace", SYSTEM_NAMESPACE)
        self.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(secrets))
        envoy = self.home / "data" / "envoy-versions" / ENVOY_VERSION / "bin" / "envoy"
        envoy.parent.mkdir(parents=True)
        shutil.copy2(built / "envoy", envoy)
        (self.home / "eg.yaml").write_text(yaml.safe_dump(config(self.home)))
        self.process = spawn(
            "envoy-gateway",
            [server, "server", "--config-path", str(self.home / "eg.yaml")],
            self.home,
            {**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
        )
        self._wait(lambda: _get("http://127.0.0.1:8081/readyz") == 200, "ready at :8081/readyz")

    @staticmethod
    def _tls(folder: Path) -> dict[str, bytes]:
        return {name: (folder / name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key")}

    def _wait(self, probe: Callable[[], object], what: str, timeout: float = READY_TIMEOUT) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            value = probe()
            if value:
                return value
            time.sleep(0.1)
        raise GatewayError(f"Envoy Gateway not {what} after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def check_alive(self) -> None:
        if self.process is not None:
            self.process.check_alive()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    # --- Gateway API ----------------------------------------------------------------------------------

    def gateway(self, namespace: str, name: str, port: int, class_name: str = "eg") -> str:
        """A GatewayClass for this controller and a Gateway with one HTTP listener on `port` that accepts
        routes from every namespace; returns the listener's URL."""
        manifests = [
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "GatewayClass",
                "metadata": {"name": class_name},
                "spec": {"controllerName": CONTROLLER},
            },
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "gatewayClassName": class_name,
                    "listeners": [
                        {
                            "name": "http",
                            "protocol": "HTTP",
                            "port": port,
                            "allowedRoutes": {"namespaces": {"from": "All"}},
                        }
                    ],
                },
            },
        ]
        self.cluster.kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(manifests))
        return f"http://127.0.0.1:{port}"

    def route_conditions(self, namespace: str, name: str) -> dict[str, str]:
        """The HTTPRoute's conditions written by this controller, {type: status}."""
        route = self.cluster.custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", namespace, "httproutes", name
        )
        return {
            c["type"]: c["status"]
            for parent in route.get("status", {}).get("parents", [])
            if parent.get("controllerName") == CONTROLLER
            for c in parent.get("conditions", [])
        }

    def wait_route(
        self, namespace: str, name: str, url: str, host: str | None = None, timeout: float = 60.0
    ) -> float:
        """Wait until the HTTPRoute is Accepted with ResolvedRefs and `url` (with Host `host`) answers 200
        through the listener; returns the seconds it took."""
        start = time.monotonic()

        def accepted() -> bool:
            conditions = self.route_conditions(namespace, name)
            return conditions.get("Accepted") == "True" and conditions.get("ResolvedRefs") == "True"

        self._wait(accepted, f"accepting HTTPRoute {namespace}/{name}", timeout)
        self._wait(lambda: _get(url, host) == 200, f"routing {url} (Host {host})", timeout)
        return time.monotonic() - start


def _get(url: str, host: str | None = None, headers: dict[str, str] | None = None) -> int:
    """The status of a GET (0 when nothing answers)."""
    request = urllib.request.Request(url, headers={**({"Host": host} if host else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0
