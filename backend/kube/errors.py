"""Kubernetes problems a user can act on, each reported as one line."""

from __future__ import annotations

from ..errors import LaminaError


class KubeError(LaminaError):
    """Base of every Kubernetes-side problem lamina reports."""


class KubeconfigError(KubeError):
    """The kubeconfig file is missing, unreadable or incomplete."""


class NoSuchContext(KubeError):
    """The named context is not in the kubeconfig."""


class ClusterUnreachable(KubeError):
    """The API server did not answer (refused, timed out, TLS failure)."""


class KubeUnauthorized(KubeError):
    """The API server rejected the credentials of the context (401)."""


class KubeForbidden(KubeError):
    """RBAC refused a request (403); the message names verb, resource and namespace."""


class KubeNotFound(KubeError):
    """An object or resource type does not exist (404)."""


class KubeConflict(KubeError):
    """An object of that name already exists (409)."""


class KubeInvalid(KubeError):
    """The API server refused an object as invalid (422) or malformed (400)."""


class KubeApiError(KubeError):
    """Any other error answer from the API server."""


class NoSnapshotClass(KubeError):
    """No VolumeSnapshotClass serves the CSI driver of a volume."""


class DriverWithoutCbt(KubeError):
    """The CSI driver has no SnapshotMetadataService: no changed-block tracking."""


class FilesystemVolume(KubeError):
    """The PVC is in Filesystem mode; lamina backs up block volumes only."""


class VolumeNotBound(KubeError):
    """The PVC is not bound to a PersistentVolume yet."""


class SnapshotTimeout(KubeError):
    """A VolumeSnapshot did not become ready in time."""


class SnapshotFailed(KubeError):
    """The snapshot controller reported an error for a VolumeSnapshot."""


class DataMoverFailed(KubeError):
    """The data-mover Job failed or did not finish in time."""


class DataMoverTimeout(DataMoverFailed):
    """The data-mover Job did not finish in time (it may still be running)."""
