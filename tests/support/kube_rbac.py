"""Least-privilege checks of RBAC manifests against what a component really asked for.

``accesses(events)`` turns the real API server's audit events (RealKube.audit_events) into
the set of ``Access(verb, group, resource)`` made (``resource`` with ``/subresource``), with
the answer codes; ``granted(docs, namespace, service_account)`` is the set that the Roles and
ClusterRoles in ``docs`` grant to that ServiceAccount through the bindings in ``docs``.
``least_privilege(used, granted)`` says what was used but not granted, and what was granted
but never used. Generic: the data mover's RBAC (deploy/rbac.yaml) and the controller's use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True, order=True)
class Access:
    verb: str
    group: str  # "" for the core group
    resource: str  # plural, with "/subresource" where there is one

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f".{self.group}" if self.group else "")


def accesses(events: Iterable[Obj]) -> dict[Access, set[int]]:
    """Access -> the answer codes the server gave, from audit events of resource requests."""
    used: dict[Access, set[int]] = {}
    for event in events:
        ref = event.get("objectRef")
        if not ref or not ref.get("resource"):
            continue  # a non-resource URL such as /version
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        access = Access(event["verb"], ref.get("apiGroup", ""), resource)
        used.setdefault(access, set()).add(int(event.get("responseStatus", {}).get("code", 0)))
    return used


def _rules_granted(rules: Iterable[Obj]) -> set[Access]:
    out = set()
    for rule in rules:
        for part in ("apiGroups", "resources", "verbs"):
            if "*" in rule.get(part, []):
                raise ValueError(f"a wildcard in {part} cannot be checked for least privilege")
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add(Access(verb, group, resource))
    return out


def granted(docs: Iterable[Obj], namespace: str, service_account: str) -> set[Access]:
    """What the (Cluster)Roles among `docs` grant the ServiceAccount through the
    (Cluster)RoleBindings among `docs` (a binding to a role not in `docs` is an error)."""
    docs = list(docs)
    roles = {
        (d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("Role", "ClusterRole")
    }
    out: set[Access] = set()
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == service_account
            and s.get("namespace") == namespace
            for s in binding.get("subjects", [])
        ):
            continue
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], ref["name"]))
        if role is None:
            raise ValueError(
                f"{binding['kind']} {binding['metadata']['name']} binds {ref['kind']} {ref['name']}, not among the documents"
            )
        out |= _rules_granted(role.get("rules", []))
    return out


def least_privilege(used: Iterable[Access], grants: set[Access]) -> tuple[set[Access], set[Access]]:
    """(used but not granted, granted but never used)."""
    used = set(used)
    return used - grants, grants - used
