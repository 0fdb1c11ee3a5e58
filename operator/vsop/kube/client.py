"""Talking to the API server: credentials for kopf, and the few writes vsop makes.

Owns where credentials come from (in-cluster service account, or a kubeconfig),
handing them to kopf (which does all reading: lists and watches), and the writes:
a JSON merge patch of a VirtualService's status subresource and of a VipPool's (controller), a node's
own report object read once and merge-patched or created (agent, vsop.kube.report),
and creating a core/v1 Event; and the one read kopf does not make: a GET of a named Secret (the
agent's BGP passwords). These go through the official client in a worker thread, so the same
credentials (with token refresh) serve both.
Must not import vsop.node.execute, vsop.adapters or vsop.adapters.real.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import kopf
import kubernetes.client
import kubernetes.config
import urllib3

from vsop.kube.report import PLURAL as REPORTS, new_report
from vsop.api.model import API_GROUP, API_VERSION, KIND
from vsop.api.pools import POOL_PLURAL as POOLS

log = logging.getLogger("vsop.kube.client")

PLURAL = "virtualservices"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# (connect, read) seconds of every request vsop makes through the official client (kopf's own reads
# and watches are kopf's). Without them a request on a connection that stalls (an API server gone
# behind a load balancer, a partition that drops packets) waits in its worker thread for ever: that
# writer stops, and at exit asyncio.run waits for the thread (the kube tier's "hang": a status PATCH
# to kmock whose answer never came, the process stuck in shutdown_default_executor). The API server
# gives up on a request after 60 s by default; a write answered after 30 s is retried by the turns.
REQUEST_TIMEOUT = (10.0, 30.0)


class TimedApiClient(kubernetes.client.ApiClient):
    """The official client with REQUEST_TIMEOUT on every request that sets none, the response's body
    read within it, and a request that got no answer (a timeout, a refused or reset connection)
    raised as `ApiException` with status 0, as the client raises a TLS failure: what every caller
    already turns into a failed write (`ApiError`), instead of urllib3's own exceptions."""

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        try:
            response = super().call_api(*args, **kwargs)
            if isinstance(response, kubernetes.client.rest.RESTResponse) and callable(getattr(response, "read", None)):
                # The body now, under this translation; its read() keeps it for the callers' `.data`
                # (a raw urllib3 response, which older clients return, would not: left to the caller).
                response.read()
            return response
        except urllib3.exceptions.HTTPError as exc:
            raise kubernetes.client.exceptions.ApiException(status=0, reason=f"no answer from the API server: {exc}") from exc


class ApiError(Exception):
    """The API server refused a write (other than the object being gone)."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


@dataclass(frozen=True)
class ObjectRef:
    """The VirtualService an Event or a status patch is about."""

    namespace: str
    name: str
    uid: str | None = None
    kind: str = KIND  # or Service: the LoadBalancer Services' Events (vsop.kube.loadbalancers)
    api_version: str = f"{API_GROUP}/{API_VERSION}"
    # A cluster-scoped object (a BGPSpeaker): its Events live in `namespace`, the involved object has none.
    cluster_scoped: bool = False

    def involved_object(self) -> dict[str, Any]:
        ref = {"apiVersion": self.api_version, "kind": self.kind, "namespace": self.namespace, "name": self.name}
        if self.cluster_scoped:
            del ref["namespace"]
        if self.uid:
            ref["uid"] = self.uid
        return ref

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class Writer(Protocol):
    """The writes the agent and the controller make; tests may substitute a recorder."""

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> bool:
        """Merge-patch `status`; False if the object is gone."""
        ...

    async def post_event(self, ref: ObjectRef, type: str, reason: str, message: str) -> None: ...

    async def read_node_report(self, node: str) -> Mapping[str, Any] | None:
        """This node's report object (vsop.kube.report), or None when there is none yet."""
        ...

    async def patch_node_report(self, node: str, body: Mapping[str, Any]) -> None:
        """Merge-patch this node's report object, creating it when it does not exist."""
        ...

    async def delete_node_report(self, node: str) -> None:
        """Delete a node's report (the controller, once its Node is gone); gone already is fine."""
        ...

    async def patch_pool_status(self, pool: str, status: Mapping[str, Any]) -> bool:
        """Merge-patch a VipPool's status (the controller: held claims, vsop.kube.claims); False if the pool is gone."""
        ...


class Connection:
    """One set of credentials: a `kubernetes.client.Configuration` kept by this object (not the global default)."""

    def __init__(self, configuration: kubernetes.client.Configuration, source: str):
        self.configuration = configuration
        self.source = source
        self.api = TimedApiClient(configuration)

    @classmethod
    def for_url(cls, url: str) -> "Connection":
        """No credentials at all: a local test server."""
        configuration = kubernetes.client.Configuration()
        configuration.host = url.rstrip("/")
        return cls(configuration, f"url {url}")

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> "Connection":
        """--kubeconfig if given; else in-cluster when running in a pod; else $KUBECONFIG or ~/.kube/config."""
        configuration = kubernetes.client.Configuration()
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(f"{SERVICE_ACCOUNT_DIR}/token"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
            return cls(configuration, "in-cluster service account")
        kubernetes.config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        return cls(configuration, f"kubeconfig {kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}")

    def connection_info(self) -> kopf.ConnectionInfo:
        """The same credentials for kopf; called again by kopf whenever they stop working (token refresh)."""
        config = self.configuration
        header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
        parts = header.split(" ", 1) if header else []
        scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        return kopf.ConnectionInfo(
            server=config.host,
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            username=config.username or None,
            password=config.password or None,
            scheme=scheme,
            token=token,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
        )

    def register_login(self, registry: kopf.OperatorRegistry) -> None:
        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return self.connection_info()


class SecretReader(Protocol):
    """GET one Secret (the agent's BGP passwords, vsop.kube.speakers): (HTTP status, its `data` or why not)."""

    async def read_secret(self, namespace: str, name: str) -> tuple[int, Mapping[str, str] | str]: ...


class ApiSecrets:
    """`SecretReader` over the official client: one GET by name (no list, no watch). The body of an
    error is the API server's message, never the Secret; the data stays base64 as the API gives it."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def _read(self, namespace: str, name: str) -> tuple[int, Mapping[str, str] | str]:
        api = kubernetes.client.CoreV1Api(self.connection.api)
        try:
            response = api.read_namespaced_secret(name, namespace, _preload_content=False)
            return int(response.status), dict(json.loads(response.data or b"{}").get("data") or {})
        except kubernetes.client.exceptions.ApiException as exc:
            return int(exc.status or 0), _message(str(exc.body or exc.reason))

    async def read_secret(self, namespace: str, name: str) -> tuple[int, Mapping[str, str] | str]:
        return await asyncio.to_thread(self._read, namespace, name)


class ApiWriter:
    """`Writer` over the official client; blocking calls run in a worker thread."""

    def __init__(self, connection: Connection, component: str, host: str | None = None):
        self.connection = connection
        self.component = component
        self.host = host

    def _patch_status(self, ref: ObjectRef, body: dict[str, Any]) -> tuple[int, str]:
        api = kubernetes.client.CustomObjectsApi(self.connection.api)
        try:
            response = api.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, ref.namespace, PLURAL, ref.name, body,
                _content_type="application/merge-patch+json", _preload_content=False,
            )
            return int(response.status), ""
        except kubernetes.client.exceptions.ApiException as exc:
            return int(exc.status or 0), str(exc.body or exc.reason)

    def _create_event(self, namespace: str, body: dict[str, Any]) -> tuple[int, str]:
        api = kubernetes.client.CoreV1Api(self.connection.api)
        try:
            response = api.create_namespaced_event(namespace, body, _preload_content=False)
            return int(response.status), ""
        except kubernetes.client.exceptions.ApiException as exc:
            return int(exc.status or 0), str(exc.body or exc.reason)

    def _report(self, verb: str, node: str, body: Any = None) -> tuple[int, Any]:
        api = kubernetes.client.CustomObjectsApi(self.connection.api)
        try:
            if verb == "get":
                response = api.get_cluster_custom_object(API_GROUP, API_VERSION, REPORTS, node, _preload_content=False)
            elif verb == "patch":
                response = api.patch_cluster_custom_object(API_GROUP, API_VERSION, REPORTS, node, body,
                                                           _content_type="application/merge-patch+json", _preload_content=False)
            elif verb == "delete":
                response = api.delete_cluster_custom_object(API_GROUP, API_VERSION, REPORTS, node, _preload_content=False)
            else:
                response = api.create_cluster_custom_object(API_GROUP, API_VERSION, REPORTS, body, _preload_content=False)
            return int(response.status), json.loads(response.data or b"null")
        except kubernetes.client.exceptions.ApiException as exc:
            return int(exc.status or 0), str(exc.body or exc.reason)

    async def read_node_report(self, node: str) -> Mapping[str, Any] | None:
        code, found = await asyncio.to_thread(self._report, "get", node)
        if code == 404:
            return None
        if not 200 <= code < 300:
            raise ApiError(code, _message(str(found)))
        return found if isinstance(found, Mapping) else None

    async def patch_node_report(self, node: str, body: Mapping[str, Any]) -> None:
        code, found = await asyncio.to_thread(self._report, "patch", node, dict(body))
        if code == 404:  # the first report of this node: create it (another agent never writes it)
            code, found = await asyncio.to_thread(self._report, "create", node, new_report(node, body))
        if not 200 <= code < 300:
            raise ApiError(code, _message(str(found)))

    async def delete_node_report(self, node: str) -> None:
        code, found = await asyncio.to_thread(self._report, "delete", node)
        if code != 404 and not 200 <= code < 300:
            raise ApiError(code, _message(str(found)))

    def _patch_pool_status(self, pool: str, body: dict[str, Any]) -> tuple[int, str]:
        api = kubernetes.client.CustomObjectsApi(self.connection.api)
        try:
            response = api.patch_cluster_custom_object_status(API_GROUP, API_VERSION, POOLS, pool, body,
                                                              _content_type="application/merge-patch+json", _preload_content=False)
            return int(response.status), ""
        except kubernetes.client.exceptions.ApiException as exc:
            return int(exc.status or 0), str(exc.body or exc.reason)

    async def patch_pool_status(self, pool: str, status: Mapping[str, Any]) -> bool:
        code, text = await asyncio.to_thread(self._patch_pool_status, pool, {"status": dict(status)})
        if code == 404:
            return False
        if not 200 <= code < 300:
            raise ApiError(code, _message(text))
        return True

    async def patch_status(self, ref: ObjectRef, status: Mapping[str, Any]) -> bool:
        code, text = await asyncio.to_thread(self._patch_status, ref, {"status": dict(status)})
        if code == 404:
            return False
        if not 200 <= code < 300:
            raise ApiError(code, _message(text))
        return True

    async def post_event(self, ref: ObjectRef, type: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            # client-go's recorder names events <object>.<unique hex>; generateName is not relied on.
            "metadata": {"name": f"{ref.name}.{time.time_ns():x}", "namespace": ref.namespace},
            "involvedObject": ref.involved_object(),
            "reason": reason,
            "message": message[:1024],
            "type": type,
            "source": {"component": self.component, **({"host": self.host} if self.host else {})},
            "reportingComponent": f"{API_GROUP}/{self.component}",
            "reportingInstance": self.host or self.component,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        code, text = await asyncio.to_thread(self._create_event, ref.namespace, body)
        if not 200 <= code < 300:
            raise ApiError(code, _message(text))


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message", text))[:500]
    except (ValueError, AttributeError):
        return text[:500]
