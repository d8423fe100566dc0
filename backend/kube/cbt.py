"""Where and how to reach a CSI driver's changed-block-tracking service in a cluster.

The cluster-scoped SnapshotMetadataService (cbt.storage.k8s.io/v1beta1) named after the CSI
driver gives the gRPC address, the CA certificate (base64 PEM) and the token audience; a
TokenRequest for a service account gives the audience-scoped token the service checks.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from kubernetes import client as k8s

from .cluster import KubeCluster
from .errors import DriverWithoutCbt, KubeError, KubeNotFound
from .objects import CBT_GROUP, CBT_PLURAL, CBT_VERSION, SNAPSHOT_GROUP, SNAPSHOT_VERSION, section

DEFAULT_TOKEN_EXPIRY = 600  # seconds; the TokenRequest API refuses less than 10 minutes


@dataclass(frozen=True)
class CbtEndpoint:
    """Everything a gRPC client needs to call the SnapshotMetadata service."""

    address: str  # host:port
    ca_pem: bytes  # the only CA to trust for the server's certificate
    token: str = field(repr=False)  # sent as security_token
    audience: str


@dataclass(frozen=True)
class MetadataService:
    driver: str
    address: str
    ca_pem: bytes
    audience: str


def find_metadata_service(cluster: KubeCluster, driver: str) -> MetadataService:
    """The SnapshotMetadataService of `driver`; DriverWithoutCbt if the driver has none."""
    try:
        service = cluster.get_custom(CBT_GROUP, CBT_VERSION, CBT_PLURAL, driver)
    except KubeNotFound:
        raise DriverWithoutCbt(
            f"CSI driver {driver!r} has no SnapshotMetadataService in context {cluster.context!r}: "
            "it offers no changed-block tracking"
        ) from None
    spec = section(service, "spec")
    where = f"SnapshotMetadataService {driver!r}"
    address, audience, ca_text = spec.get("address"), spec.get("audience"), spec.get("caCert")
    if not address or not audience or not ca_text:
        missing = [
            k
            for k, v in (("address", address), ("audience", audience), ("caCert", ca_text))
            if not v
        ]
        raise KubeError(f"{where} lacks spec.{', spec.'.join(missing)}")
    try:
        ca_pem = base64.b64decode(str(ca_text), validate=True)
    except (binascii.Error, ValueError):
        raise KubeError(f"{where}: spec.caCert is not base64") from None
    if b"-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise KubeError(f"{where}: spec.caCert does not hold a PEM certificate")
    return MetadataService(driver, str(address), ca_pem, str(audience))


def request_token(
    cluster: KubeCluster,
    namespace: str,
    service_account: str,
    audience: str,
    *,
    expiry_seconds: int = DEFAULT_TOKEN_EXPIRY,
) -> str:
    """An audience-scoped token for a service account (TokenRequest API)."""
    body = k8s.AuthenticationV1TokenRequest(
        api_version="authentication.k8s.io/v1",
        kind="TokenRequest",
        spec=k8s.V1TokenRequestSpec(audiences=[audience], expiration_seconds=expiry_seconds),
    )
    result = cluster.request(
        "create",
        "serviceaccounts/token",
        lambda: cluster.core.create_namespaced_service_account_token(
            service_account, namespace, body, _request_timeout=cluster.request_timeout
        ),
        namespace=namespace,
        name=service_account,
    )
    token = result.status.token if result.status else None
    if not token:
        raise KubeError(
            f"the TokenRequest for service account {namespace}/{service_account} returned no token"
        )
    return str(token)


def cbt_endpoint(
    cluster: KubeCluster,
    driver: str,
    *,
    namespace: str,
    service_account: str,
    expiry_seconds: int = DEFAULT_TOKEN_EXPIRY,
) -> CbtEndpoint:
    """Address, CA and a fresh token for the CBT service of `driver`."""
    service = find_metadata_service(cluster, driver)
    token = request_token(
        cluster, namespace, service_account, service.audience, expiry_seconds=expiry_seconds
    )
    return CbtEndpoint(service.address, service.ca_pem, token, service.audience)


def driver_of_snapshot(cluster: KubeCluster, namespace: str, snapshot: str) -> str:
    """The CSI driver of a VolumeSnapshot, read from its bound VolumeSnapshotContent."""
    vs = cluster.get_custom(
        SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshots", snapshot, namespace
    )
    content_name = section(vs, "status").get("boundVolumeSnapshotContentName")
    if not content_name:
        raise KubeError(
            f"VolumeSnapshot {namespace}/{snapshot} is not bound to a VolumeSnapshotContent yet"
        )
    content = cluster.get_custom(
        SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotcontents", str(content_name)
    )
    driver = section(content, "spec").get("driver")
    if not driver:
        raise KubeError(f"VolumeSnapshotContent {content_name} names no driver")
    return str(driver)


def cbt_endpoint_for_snapshot(
    cluster: KubeCluster,
    namespace: str,
    snapshot: str,
    *,
    service_account: str,
    expiry_seconds: int = DEFAULT_TOKEN_EXPIRY,
) -> CbtEndpoint:
    """The CBT endpoint serving a VolumeSnapshot (found through its content's driver)."""
    driver = driver_of_snapshot(cluster, namespace, snapshot)
    return cbt_endpoint(
        cluster,
        driver,
        namespace=namespace,
        service_account=service_account,
        expiry_seconds=expiry_seconds,
    )
