"""The Helm chart (helm/finetune-operator) with a real helm (tests/helm/build.sh) and a real API server.

Rendering is checked against the suite's control plane (`kubectl apply --dry-run=server`). Installing
uses a control plane of its own, started without CRDs, so the chart is what brings them; the operator
then runs as the chart's ServiceAccount (a TokenRequest token) with the arguments and environment of
the rendered Deployment, through a gated job to promotion, which proves its RBAC is enough.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config

from controlplane.cluster import ControlPlane, running
from helpers.kube import Cluster
from helpers.operator_process import OperatorProcess
from helpers.s3server import S3Server
from helpers.scenario import NAME, OUTPUT, Scenario, evaluation, gated, new_scenario
from helpers.support import ROOT, eventually

CHART = ROOT / "helm" / "finetune-operator"
BUILD_SCRIPT = ROOT / "tests" / "helm" / "build.sh"
RELEASE = "finetune-operator"
SYSTEM = "finetune-system"
OPERATOR_SA = "finetune-operator"  # the full name: the release is named after the chart
TRAINER_SA = "finetune-operator-trainer"
CRD_NAMES = ("finetunejobs.finetune.dev", "evalgates.finetune.dev", "modeldeployments.finetune.dev")

# The values combinations that change what is rendered.
VALUES: dict[str, list[str]] = {
    "cluster-wide": [],
    "watch-namespaces": ["--set", "watchNamespaces={team-a,team-b}"],
    "no-crds-no-policies": ["--set", "crds.enabled=false", "--set", "admissionPolicies.enabled=false"],
    "monitoring": [
        *("--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true"),
        *("--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.dashboard.enabled=true"),
        *("--set", "monitoring.trainerPodMonitor.enabled=true"),
    ],
}


@pytest.fixture(scope="session")
def helm() -> Path:
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"building helm failed:\n{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1]) / "helm"


def run_helm(helm: Path, kubeconfig: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """helm with `kubeconfig`, or with none (template and lint need no cluster)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, check=False, env=env, timeout=120
    )


def render(helm: Path, *args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    result = run_helm(helm, None, "template", RELEASE, str(chart), "--namespace", SYSTEM, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


# --- rendering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_lint_strict(helm: Path, values: list[str]) -> None:
    result = run_helm(helm, None, "lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_values_schema_refuses_a_misspelt_value(helm: Path) -> None:
    result = run_helm(helm, None, "template", RELEASE, str(CHART), "--set", "watchNamespace={a}")
    assert result.returncode != 0
    assert "watchNamespace" in result.stderr


def test_monitors_scrape_the_operator_and_training_pods_keeping_their_labels(helm: Path) -> None:
    """The series carry the FineTuneJob's namespace (docs/metrics.md): every monitor honours it, and the
    trainers' PodMonitor looks where jobs run."""
    trainers = ["--set", "monitoring.trainerPodMonitor.enabled=true"]
    docs = render(helm, *VALUES["monitoring"], *trainers, "--set", "watchNamespaces={team-a,team-b}")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "FINETUNE_METRICS_PORT", "value": "9090"} in container["env"]
    assert {"name": "metrics", "containerPort": 9090} in container["ports"]
    monitors = {
        (d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")
    }
    endpoints = [
        e for d in monitors.values() for e in d["spec"].get("endpoints", d["spec"].get("podMetricsEndpoints"))
    ]
    assert len(endpoints) == 3
    assert all(e["honorLabels"] is True and e["port"] == "metrics" for e in endpoints)
    trainer = monitors[("PodMonitor", "finetune-operator-trainers")]["spec"]
    assert trainer["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert trainer["selector"]["matchLabels"]["app.kubernetes.io/component"] == "train"
    cluster_wide = render(helm, *trainers)
    (trainer_doc,) = [d for d in cluster_wide if d["kind"] == "PodMonitor"]
    assert trainer_doc["spec"]["namespaceSelector"] == {"any": True}


@pytest.mark.parametrize("values", VALUES.values(), ids=VALUES.keys())
def test_rendered_manifests_are_accepted_by_the_api_server(
    helm: Path, cluster: Cluster, values: list[str]
) -> None:
    for namespace in (SYSTEM, "team-a", "team-b"):
        cluster.kubectl("create", "namespace", namespace, check=False)
    docs = render(helm, *values)
    # the Prometheus Operator's kinds are not served by the test API server: checked by render only
    served = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(served), check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_operator_runs_once_restricted_and_probed(helm: Path) -> None:
    (deployment,) = [d for d in render(helm) if d["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["args"] == ["--liveness", "http://0.0.0.0:8080/healthz"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"containerPort": 8080, "name": "health"} in container["ports"]


def test_the_operator_may_drive_rollouts_and_actions_are_guarded(helm: Path) -> None:
    docs = render(helm)
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    rights = {
        (g, r): set(rule["verbs"])
        for rule in cluster_role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rights[("finetune.dev", "modeldeployments")] == {"list", "watch", "patch"}
    assert rights[("finetune.dev", "modeldeployments/status")] == {"patch"}
    assert rights[("apps", "deployments")] == {"list", "watch", "patch", "delete"}
    assert rights[("gateway.networking.k8s.io", "httproutes")] == {"list", "watch", "patch", "delete"}
    assert {"patch", "delete"} <= rights[("", "services")]
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    assert "rollouts.finetune.dev" in policies
    (operator_writes,) = [p for name, p in policies.items() if name.endswith("-operator-writes.finetune.dev")]
    (rule,) = operator_writes["spec"]["matchConstraints"]["resourceRules"]
    assert "modeldeployments" in rule["resources"]
    bindings = {d["metadata"]["name"] for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert "rollouts.finetune.dev" in bindings


def test_watch_namespaces_grant_namespaced_rights_only_there(helm: Path) -> None:
    docs = render(helm, *VALUES["watch-namespaces"])
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    (cluster_role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "customresourcedefinitions",
        "namespaces",
    }
    trainers = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == TRAINER_SA]
    assert sorted(t["metadata"]["namespace"] for t in trainers) == ["team-a", "team-b"]
    assert all(t["automountServiceAccountToken"] is False for t in trainers)


def test_crds_are_kept_and_can_be_left_out(helm: Path) -> None:
    crds = [d for d in render(helm) if d["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(CRD_NAMES)
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds)
    left_out = kinds(render(helm, *VALUES["no-crds-no-policies"]))
    assert "CustomResourceDefinition" not in left_out
    assert "ValidatingAdmissionPolicy" not in left_out


def test_monitoring_renders_alerts_and_dashboard_only_when_the_chart_has_them(
    helm: Path, tmp_path: Path
) -> None:
    docs = render(helm, *VALUES["monitoring"])
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= set(kinds(docs))
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert "PrometheusRule" not in kinds(render(helm))
    wiki = "https://wiki.example/ml/finetune-runbook"
    elsewhere = render(helm, *VALUES["monitoring"], "--set", f"monitoring.prometheusRule.runbookUrl={wiki}")
    (moved,) = [d for d in elsewhere if d["kind"] == "PrometheusRule"]
    urls = [
        r["annotations"]["runbook_url"] for g in moved["spec"]["groups"] for r in g["rules"] if "alert" in r
    ]
    assert urls
    assert all(u.startswith(wiki + "#") for u in urls), urls
    chart = tmp_path / "finetune-operator"
    shutil.copytree(CHART, chart)
    (chart / "files" / "alerts.yaml").unlink()
    docs = render(helm, *VALUES["monitoring"], chart=chart)
    assert "PrometheusRule" not in kinds(docs)
    (dashboard,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert json.loads(dashboard["data"]["finetune-operator.json"]) == shipped


# --- installed --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane of this module's own, without the CRDs: the chart installs them."""
    with running(workdir=tmp_path_factory.mktemp("helm-kube")) as plane:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        try:
            yield Cluster(plane, api)
        finally:
            api.close()


def token_kubeconfig(plane: ControlPlane, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates with a TokenRequest token of the ServiceAccount."""
    result = plane.kubectl("create", "token", account, "-n", namespace, "--duration=1h")
    assert result.returncode == 0, result.stderr
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "t",
                        "cluster": {
                            "server": plane.server,
                            "certificate-authority": str(plane.pki["ca.crt"]),
                        },
                    }
                ],
                "users": [{"name": account, "user": {"token": result.stdout.strip()}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": account}}],
                "current-context": "t",
            }
        )
    )
    path.chmod(0o600)
    return path


def patch_as(kubeconfig: Path, plane: ControlPlane, path: str, body: dict[str, Any]) -> tuple[int, str]:
    """A merge patch with the kubeconfig's token; the response's status code and message."""
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    request = urllib.request.Request(
        plane.server + path,
        data=json.dumps(body).encode(),
        method="PATCH",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
    )
    tls = ssl.create_default_context(cafile=str(plane.pki["ca.crt"]))
    try:
        with urllib.request.urlopen(request, context=tls, timeout=30) as response:
            return response.status, ""
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["message"]


def can_i(plane: ControlPlane, *args: str) -> bool:
    result = plane.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{SYSTEM}:{OPERATOR_SA}")
    return result.stdout.strip() == "yes"


def operator_from(deployment: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The namespaces (-n) and environment the chart gives the operator container."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    namespaces = tuple(args[i + 1] for i, arg in enumerate(args) if arg == "-n")
    return namespaces, {e["name"]: e["value"] for e in container["env"]}


def test_install_run_as_its_service_account_upgrade_and_uninstall(
    helm: Path, bare: Cluster, s3: S3Server, tmp_path: Path
) -> None:
    plane = bare.plane
    scenario: Scenario = new_scenario(bare, s3)
    bare.kubectl("create", "namespace", "elsewhere")
    settings = [f"watchNamespaces={{{scenario.namespace}}}", "settings.reconcileInterval=1"]
    settings += ["settings.s3Timeout=2", "settings.cleanupDeadline=4"]
    values = [arg for setting in settings for arg in ("--set", setting)]
    installed = run_helm(
        helm, plane.kubeconfig, "install", RELEASE, str(CHART), "-n", SYSTEM, "--create-namespace", *values
    )
    assert installed.returncode == 0, installed.stderr
    bare.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{c}" for c in CRD_NAMES))

    ns = scenario.namespace
    assert_least_privilege(plane, ns)

    # the operator as the Deployment runs it, authenticated as the chart's ServiceAccount
    manifest = run_helm(helm, plane.kubeconfig, "get", "manifest", RELEASE, "-n", SYSTEM).stdout
    (deployment,) = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Deployment"]
    namespaces, env = operator_from(deployment)
    assert namespaces == (ns,)
    assert env["FINETUNE_TRAINER_SERVICE_ACCOUNT"] == TRAINER_SA
    kubeconfig = token_kubeconfig(plane, SYSTEM, OPERATOR_SA, tmp_path / "operator.kubeconfig")
    operator = OperatorProcess(kubeconfig, tmp_path, namespaces, env).start()
    try:
        promoted(scenario)
        train = scenario.wait_job(f"{NAME}-train-1")
        assert train.spec.template.spec.service_account_name == TRAINER_SA
        # approving is for the gate's approvers: the admission policies refuse the operator
        # (a PATCH as the operator sends it: kubectl would GET first, which the operator may not)
        me = f"system:serviceaccount:{SYSTEM}:{OPERATOR_SA}"
        reject = {"metadata": {"annotations": {"finetune.dev/reject": "x", "finetune.dev/rejected-by": me}}}
        status, message = patch_as(
            kubeconfig, plane, f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs/{NAME}", reject
        )
        assert status == 403
        assert "only the approvers of EvalGate support-release" in message
        # its patch right covers metadata (finalizer, annotations), never what the user asked for
        job = f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs/{NAME}"
        status, message = patch_as(kubeconfig, plane, job, {"spec": {"suspend": True}})
        assert status == 403, message
        assert "never its spec" in message
        status, _ = patch_as(kubeconfig, plane, job, {"metadata": {"annotations": {"finetune.dev/x": "1"}}})
        assert status == 200
        assert "forbidden" not in operator.log().lower(), operator.log()
    finally:
        operator.stop()

    upgrade_with_a_new_column(helm, bare, tmp_path / "chart", values)

    # uninstall: the operator and its rights go, the CRDs and users' jobs stay
    uninstalled = run_helm(helm, plane.kubeconfig, "uninstall", RELEASE, "-n", SYSTEM)
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert "kept due to the resource policy" in uninstalled.stdout + uninstalled.stderr
    for crd_name in CRD_NAMES:
        bare.kubectl("get", "crd", crd_name)
    assert bare.ftj(ns, NAME)["status"]["phase"] == "Succeeded"
    assert not can_i(plane, "get", "secrets", "-n", ns)
    gone = bare.kubectl("get", "deployment", "-n", SYSTEM, "-o", "name", check=False).stdout
    assert gone.strip() == ""


def assert_least_privilege(plane: ControlPlane, namespace: str) -> None:
    """What the API server says the operator may and may not do, watching only `namespace`."""
    assert can_i(plane, "get", "secrets", "-n", namespace)
    assert not can_i(plane, "get", "secrets", "-n", "elsewhere")
    assert not can_i(plane, "list", "secrets", "-n", namespace)
    assert can_i(plane, "get", "serviceaccounts", "-n", namespace)  # before any pod: does it exist?
    assert not can_i(plane, "get", "serviceaccounts", "-n", "elsewhere")
    assert not can_i(plane, "list", "serviceaccounts", "-n", namespace)
    assert not can_i(plane, "list", "finetunejobs.finetune.dev", "-n", "elsewhere")
    assert not can_i(plane, "update", "finetunejobs.finetune.dev", "-n", namespace)
    assert not can_i(plane, "create", "finetunejobs.finetune.dev", "-n", namespace)
    assert not can_i(plane, "list", "evalgates.finetune.dev", "-n", namespace)


def upgrade_with_a_new_column(helm: Path, bare: Cluster, chart: Path, values: list[str]) -> None:
    """`helm upgrade` to a chart whose FineTuneJob CRD has one more printer column: the served CRD gets
    it (a CRD in Helm's crds/ folder would not be upgraded)."""
    shutil.copytree(CHART, chart)
    crd_file = chart / "files" / "crds" / "finetunejobs.finetune.dev.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    column = {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.uid"}
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(column)
    crd_file.write_text(yaml.safe_dump(crd))
    upgraded = run_helm(helm, bare.plane.kubeconfig, "upgrade", RELEASE, str(chart), "-n", SYSTEM, *values)
    assert upgraded.returncode == 0, upgraded.stderr
    served = json.loads(bare.kubectl("get", "crd", CRD_NAMES[0], "-o", "json").stdout)
    assert column in served["spec"]["versions"][0]["additionalPrinterColumns"]


def promoted(scenario: Scenario) -> None:
    """Validate, train, gate (passing), approve as the suite's admin, promote: Succeeded. The job names
    no ServiceAccount: its pods get the operator's default."""
    gated(scenario, {"serviceAccountName": None}, approvers={"users": ["admin"]})
    scenario.wait_job(f"{NAME}-evaluate")
    scenario.put("eval/report.json", evaluation())
    scenario.cluster.finish_job(scenario.namespace, f"{NAME}-evaluate")
    verdict = scenario.wait_phase("AwaitingApproval")["gate"]["verdictId"]
    scenario.cluster.kubectl(
        "annotate", "ftj", NAME, "-n", scenario.namespace,
        f"finetune.dev/approve={verdict}", "finetune.dev/approved-by=admin",
    )  # fmt: skip
    promote = scenario.wait_job(f"{NAME}-promote")
    target = json.loads(promote.spec.template.metadata.annotations["finetune.dev/trainer-config"])
    assert target["promotion"]["versionUri"].startswith(OUTPUT)
    digest = scenario.publish(target["promotion"]["versionUri"])
    status = scenario.wait_phase("Succeeded")
    assert status["promoted"]["digest"] == digest
    # events are best effort (a refusal is only logged): they were recorded under the chart's rights
    reasons = eventually(lambda: [r for r, _ in scenario.events()] or None, 10, "no events recorded")
    assert {"TrainingRunning", "PromotionRunning", "Completed"} <= set(reasons)
