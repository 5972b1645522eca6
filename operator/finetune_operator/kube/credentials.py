"""How the operator authenticates, as kubectl does: the in-cluster service account, else the kubeconfig.

Read when asked (after login), not at import. Supports what clusters hand to operators: a bearer token
(inline or a file), client certificates and CA bundles (paths or inline base64 data), and
`insecure-skip-tls-verify`. Exec and auth-provider plugins are refused with a clear error rather than
half-supported. Kept apart from the Kubernetes Python client, whose import costs the operator ~40 MB.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CredentialsError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl_context: ssl.SSLContext
    token: str | None = None


def load(kubeconfig: str | None = None) -> Credentials:
    """In-cluster when the service account is mounted, else `kubeconfig` (default $KUBECONFIG or
    ~/.kube/config) at its current context."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if host and port and (SERVICE_ACCOUNT / "token").exists() and kubeconfig is None:
        context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
        token = (SERVICE_ACCOUNT / "token").read_text().strip()
        return Credentials(f"https://{host}:{port}", context, token)
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config"
    return from_kubeconfig(Path(path).expanduser())


def from_kubeconfig(path: Path) -> Credentials:
    try:
        config: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise CredentialsError(f"no in-cluster service account and no kubeconfig at {path}: {err}") from err
    base = path.parent
    current = config.get("current-context")
    context = _named(config, "contexts", current, path).get("context", {})
    cluster = _named(config, "clusters", context.get("cluster"), path).get("cluster", {})
    user = _named(config, "users", context.get("user"), path).get("user", {}) if context.get("user") else {}
    if "exec" in user or "auth-provider" in user:
        raise CredentialsError(f"{path}: user {context.get('user')!r} needs an exec/auth-provider plugin")
    ssl_context = ssl.create_default_context()
    if cluster.get("certificate-authority-data"):
        ssl_context.load_verify_locations(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
    elif cluster.get("certificate-authority"):
        ssl_context.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
    if cluster.get("insecure-skip-tls-verify"):
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    _client_certificate(ssl_context, user, base)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    return Credentials(str(cluster["server"]).rstrip("/"), ssl_context, token)


def _named(config: dict[str, Any], section: str, name: str | None, path: Path) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if entry.get("name") == name:
            return dict(entry)
    raise CredentialsError(f"{path}: no {section[:-1]} named {name!r}")


def _client_certificate(context: ssl.SSLContext, user: dict[str, Any], base: Path) -> None:
    if user.get("client-certificate-data") and user.get("client-key-data"):
        # ssl loads key pairs from files only: a private temporary file, removed at once
        with tempfile.TemporaryDirectory() as tmp:
            pair = Path(tmp) / "client.pem"
            pair.touch(mode=0o600)
            pair.write_bytes(
                base64.b64decode(user["client-certificate-data"])
                + b"\n"
                + base64.b64decode(user["client-key-data"])
            )
            context.load_cert_chain(str(pair))
    elif user.get("client-certificate") and user.get("client-key"):
        context.load_cert_chain(str(base / user["client-certificate"]), str(base / user["client-key"]))
