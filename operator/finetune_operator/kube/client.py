"""The operator's writes to the Kubernetes API: create-if-absent, server-side apply, status, annotation
removal, events, delete.

Reads come from Kopf's watch-fed indexes (see handlers); this module only writes, plus the odd GET (a
Secret for S3 credentials). One aiohttp session, authenticated the way kubectl is (kubeconfig or the
in-cluster service account), reused for every request. Requests the API server refuses (other than an
answer the caller expects, such as 409 on create) and requests that get no answer are counted in
`finetune_operator_kube_api_errors_total` by verb and code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from finetune_api.base import API_VERSION
from finetune_api.v1alpha1 import RESOURCES as API_RESOURCES
from finetune_operator.kube import credentials
from finetune_operator.metrics import METRICS, Metrics

FIELD_MANAGER = "finetune-operator"
APPLY = "application/apply-patch+yaml"
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
MERGE = "application/merge-patch+json"

# kind -> (API prefix, plural)
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Secret": ("/api/v1", "secrets"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Event": ("/api/v1", "events"),
    "Job": ("/apis/batch/v1", "jobs"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    **{names.kind: (f"/apis/{API_VERSION}", names.plural) for _, names in API_RESOURCES},
    # cluster-scoped (namespace ""): the approval policies' presence is what makes approvals trustworthy
    "ValidatingAdmissionPolicy": ("/apis/admissionregistration.k8s.io/v1", "validatingadmissionpolicies"),
    "ValidatingAdmissionPolicyBinding": (
        "/apis/admissionregistration.k8s.io/v1",
        "validatingadmissionpolicybindings",
    ),
}


class KubeError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass
class KubeClient:
    server: str
    session: aiohttp.ClientSession
    metrics: Metrics = field(default=METRICS)

    @classmethod
    def connect(cls, user_agent: str = FIELD_MANAGER) -> KubeClient:
        """Authenticate as kubectl would: in-cluster service account, else the kubeconfig."""
        creds = credentials.load()
        headers = {"User-Agent": user_agent}
        if creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=creds.ssl_context, limit=64),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=30),
        )
        return cls(creds.server, session)

    async def close(self) -> None:
        await self.session.close()

    def _url(self, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = RESOURCES[kind]
        scope = f"/namespaces/{namespace}" if namespace else ""
        url = f"{self.server}{prefix}{scope}/{plural}"
        if name:
            url += f"/{name}"
        if sub:
            url += f"/{sub}"
        return url

    async def _request(
        self,
        verb: str,
        method: str,
        url: str,
        body: Any = None,
        content_type: str = "application/json",
        *,
        parse: bool = True,
        expected: tuple[int, ...] = (),
        accept: str | None = None,
        **params: str,
    ) -> dict[str, Any]:
        """The response as a dict; `parse=False` skips decoding it (writes whose answer nobody reads).
        A refusal raises KubeError; it counts as an API error unless its code is in `expected`."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if body is not None else {}
        if accept is not None:
            headers["Accept"] = accept
        try:
            async with self.session.request(
                method, url, data=data, headers=headers, params=params
            ) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            self.metrics.api_errors.labels(verb, "0").inc()
            raise
        if response.status >= 400:
            if response.status not in expected:
                self.metrics.api_errors.labels(verb, str(response.status)).inc()
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise KubeError(response.status, message)
        result: dict[str, Any] = json.loads(text) if text and parse else {}
        return result

    async def create(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create unless it exists; True if this call created it."""
        try:
            url = self._url(manifest["kind"], namespace)
            await self._request("create", "POST", url, manifest, parse=False, expected=(409,))
        except KubeError as err:
            if err.status == 409:
                return False
            raise
        return True

    async def apply(self, namespace: str, manifest: dict[str, Any]) -> None:
        """Server-side apply of the fields in `manifest`, owned by the operator's field manager."""
        url = self._url(manifest["kind"], namespace, manifest["metadata"]["name"])
        await self._request(
            "apply", "PATCH", url, manifest, APPLY, parse=False, fieldManager=FIELD_MANAGER, force="true"
        )

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        *,
        kind: str = "FineTuneJob",
        resource_version: str | None = None,
    ) -> None:
        """Merge-patch the status; with `resource_version`, only if the object is still at it (409 if
        another writer came first)."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        url = self._url(kind, namespace, name, "status")
        await self._request("patch_status", "PATCH", url, body, MERGE, parse=False)

    async def remove_annotations(
        self,
        kind: str,
        namespace: str,
        name: str,
        keys: tuple[str, ...],
        *,
        resource_version: str | None = None,
    ) -> None:
        """Merge-patch the metadata so that `keys` are gone (absent keys are fine); with
        `resource_version`, only if the object is still at it (409 if another writer came first)."""
        metadata: dict[str, Any] = {"annotations": dict.fromkeys(keys)}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        url = self._url(kind, namespace, name)
        await self._request("patch", "PATCH", url, {"metadata": metadata}, MERGE, parse=False)

    async def event(self, involved: dict[str, Any], type_: str, reason: str, message: str, now: str) -> None:
        """Record a core/v1 Event about `involved` (apiVersion, kind, name, namespace, uid)."""
        namespace = involved["namespace"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._request("event", "POST", self._url("Event", namespace), body, parse=False)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("get", "GET", self._url(kind, namespace, name), expected=(404,))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def exists(self, kind: str, namespace: str, name: str) -> bool:
        """Whether the object exists, reading only its metadata (a Secret's data never leaves the server)."""
        url = self._url(kind, namespace, name)
        try:
            await self._request("get", "GET", url, expected=(404,), parse=False, accept=METADATA_ONLY)
        except KubeError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete with background propagation (the Job's pods go too); absent is fine."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            url = self._url(kind, namespace, name)
            await self._request("delete", "DELETE", url, body, parse=False, expected=(404,))
        except KubeError as err:
            if err.status != 404:
                raise
