"""One Kubernetes cluster reached through a kubeconfig context, with errors that name the problem.

Every request goes through `KubeCluster.request`, which bounds it with a timeout and turns
the client's exceptions into one-line KubeError subclasses that say which verb, resource and
namespace failed and in which context.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from .config import load_kubeconfig
from .errors import (
    ClusterUnreachable,
    KubeApiError,
    KubeconfigError,
    KubeConflict,
    KubeForbidden,
    KubeInvalid,
    KubeNotFound,
    KubeUnauthorized,
)

T = TypeVar("T")

DEFAULT_TIMEOUT = 15.0
DEFAULT_RETRIES = 1
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def status_message(body: str | bytes | None) -> str:
    """The `message` of a Kubernetes Status body, or the body's first line."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip().splitlines()[0] if text.strip() else ""
    message = doc.get("message") if isinstance(doc, dict) else None
    return message if isinstance(message, str) else ""


def _where(namespace: str | None) -> str:
    return f'in namespace "{namespace}"' if namespace else "at cluster scope"


def _root_cause(error: BaseException) -> str:
    """The innermost reason of a urllib3 failure, e.g. 'Connection refused' or 'read timeout'."""
    reason: BaseException | None = error
    while isinstance(reason, urllib3.exceptions.MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    text = str(reason) if reason is not None else str(error)
    # urllib3 wraps the OS error text after the connection object's repr
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if match:
        return match.group(1).strip()
    if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return "no answer (read timed out)"
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return "connection timed out"
    return text.splitlines()[0] if text else type(error).__name__


class KubeCluster:
    """API clients for one context, sharing one connection pool."""

    def __init__(
        self,
        context: str,
        api_client: k8s.ApiClient,
        *,
        server: str | None,
        default_namespace: str | None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.context = context
        self.api_client = api_client
        self.server = server
        self.default_namespace = default_namespace or "default"
        self.timeout = timeout

    # The API classes load lazily: each costs a noticeable part of a second to import.

    @cached_property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api_client)

    @cached_property
    def storage(self) -> k8s.StorageV1Api:
        return k8s.StorageV1Api(self.api_client)

    @cached_property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api_client)

    @cached_property
    def batch(self) -> k8s.BatchV1Api:
        return k8s.BatchV1Api(self.api_client)

    @cached_property
    def rbac(self) -> k8s.RbacAuthorizationV1Api:
        return k8s.RbacAuthorizationV1Api(self.api_client)

    @cached_property
    def version(self) -> k8s.VersionApi:
        return k8s.VersionApi(self.api_client)

    @classmethod
    def open(
        cls,
        context: str | None = None,
        kubeconfig: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int | None = None,
    ) -> KubeCluster:
        """Connect to `context` (default: the current context). Nothing is sent yet."""
        merged = load_kubeconfig(kubeconfig)
        name, ctx = merged.context(context)
        configuration = k8s.Configuration()
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=merged.client_path,
                context=name,
                client_configuration=configuration,
                persist_config=False,
            )
        except ConfigException as e:
            raise KubeconfigError(f"context {name!r}: {e}") from None
        except OSError as e:
            raise KubeconfigError(f"context {name!r}: {e}") from None
        # One retry at most: a server that does not answer should cost seconds, not minutes.
        configuration.retries = DEFAULT_RETRIES if retries is None else retries
        namespace = ctx.get("namespace")
        return cls(
            name,
            k8s.ApiClient(configuration),
            server=merged.server_of(ctx),
            default_namespace=str(namespace) if namespace else None,
            timeout=timeout,
        )

    @classmethod
    def in_cluster(
        cls,
        *,
        service_account_dir: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> KubeCluster:
        """Connect as the pod's service account (KUBERNETES_SERVICE_HOST/PORT and the
        mounted token, CA and namespace). $LAMINA_SERVICE_ACCOUNT_DIR moves the folder."""
        from kubernetes.config.incluster_config import InClusterConfigLoader

        folder = Path(
            service_account_dir
            or os.environ.get("LAMINA_SERVICE_ACCOUNT_DIR")
            or SERVICE_ACCOUNT_DIR
        )
        configuration = k8s.Configuration()
        try:
            loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=str(folder / "token"), cert_filename=str(folder / "ca.crt")
            )
            loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
        except ConfigException as e:
            raise KubeconfigError(f"not inside a Kubernetes pod (in-cluster config: {e})") from None
        configuration.retries = DEFAULT_RETRIES
        try:
            namespace = (folder / "namespace").read_text().strip() or None
        except OSError:
            namespace = None
        return cls(
            "in-cluster",
            k8s.ApiClient(configuration),
            server=configuration.host,
            default_namespace=namespace,
            timeout=timeout,
        )

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> KubeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def request_timeout(self) -> tuple[float, float]:
        """(connect, read) seconds for every request."""
        return (self.timeout, self.timeout)

    def request(
        self,
        verb: str,
        resource: str,
        call: Callable[[], T],
        *,
        namespace: str | None = None,
        name: str | None = None,
    ) -> T:
        """Run one API call; translate its failure into a KubeError that names the request."""
        try:
            return call()
        except ApiException as e:
            raise self._api_error(e, verb, resource, namespace, name) from None
        except urllib3.exceptions.HTTPError as e:
            raise ClusterUnreachable(
                f"cluster of context {self.context!r} ({self.server or 'no server'}) is unreachable: "
                f"{_root_cause(e)}"
            ) from None
        except ConfigException as e:
            raise KubeconfigError(f"context {self.context!r}: {e}") from None

    def _api_error(
        self, e: ApiException, verb: str, resource: str, namespace: str | None, name: str | None
    ) -> Exception:
        message = status_message(e.body)
        code = int(e.status or 0)
        obj = f'{resource} "{name}"' if name else resource
        ctx = f"(context {self.context!r})"
        if code == 403:
            user = re.search(r'User "([^"]+)"', message)
            who = f'user "{user.group(1)}"' if user else "the context's user"
            return KubeForbidden(f"RBAC forbids {who} to {verb} {obj} {_where(namespace)} {ctx}")
        if code == 404:
            if name:  # a missing parent (the account of serviceaccounts/token) is named as such
                return KubeNotFound(
                    f'{resource.split("/")[0]} "{name}" not found {_where(namespace)} {ctx}'
                )
            return KubeNotFound(
                f"the API server has no {resource} {_where(namespace)} {ctx}: {message}"
            )
        if code == 409:
            return KubeConflict(f"{obj} already exists {_where(namespace)} {ctx}")
        if code in (400, 422):
            return KubeInvalid(f"cannot {verb} {obj} {_where(namespace)} {ctx}: {message}")
        if code == 401:
            return KubeUnauthorized(
                f"the API server of context {self.context!r} rejected its credentials"
            )
        detail = message or str(e.reason or "")
        return KubeApiError(
            f"{verb} {obj} {_where(namespace)} {ctx} failed: HTTP {code} {detail}".rstrip()
        )

    def server_version(self) -> str:
        """GET /version: the server's gitVersion (proves the cluster answers)."""
        info = self.request(
            "get", "version", lambda: self.version.get_code(_request_timeout=self.request_timeout)
        )
        return str(info.git_version)

    # Custom resources are plain dicts: these helpers keep their calls short.

    def get_custom(
        self, group: str, version: str, plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        def call() -> object:
            if namespace:
                return self.custom.get_namespaced_custom_object(
                    group, version, namespace, plural, name, _request_timeout=self.request_timeout
                )
            return self.custom.get_cluster_custom_object(
                group, version, plural, name, _request_timeout=self.request_timeout
            )

        return _as_dict(self.request("get", plural, call, namespace=namespace, name=name))

    def list_custom(
        self, group: str, version: str, plural: str, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        def call() -> object:
            if namespace:
                return self.custom.list_namespaced_custom_object(
                    group, version, namespace, plural, _request_timeout=self.request_timeout
                )
            return self.custom.list_cluster_custom_object(
                group, version, plural, _request_timeout=self.request_timeout
            )

        items = _as_dict(self.request("list", plural, call, namespace=namespace)).get("items") or []
        return [_as_dict(item) for item in items]

    def create_custom(
        self,
        group: str,
        version: str,
        plural: str,
        body: dict[str, Any],
        namespace: str | None = None,
    ) -> dict[str, Any]:
        name = str(body.get("metadata", {}).get("name", "")) or None

        def call() -> object:
            if namespace:
                return self.custom.create_namespaced_custom_object(
                    group, version, namespace, plural, body, _request_timeout=self.request_timeout
                )
            return self.custom.create_cluster_custom_object(
                group, version, plural, body, _request_timeout=self.request_timeout
            )

        return _as_dict(self.request("create", plural, call, namespace=namespace, name=name))

    def delete_custom(
        self, group: str, version: str, plural: str, name: str, namespace: str | None = None
    ) -> None:
        def call() -> object:
            if namespace:
                return self.custom.delete_namespaced_custom_object(
                    group, version, namespace, plural, name, _request_timeout=self.request_timeout
                )
            return self.custom.delete_cluster_custom_object(
                group, version, plural, name, _request_timeout=self.request_timeout
            )

        self.request("delete", plural, call, namespace=namespace, name=name)


def _as_dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KubeApiError(
            f"the API server answered with a {type(value).__name__} where an object was expected"
        )
    return value
