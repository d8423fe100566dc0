"""Both implementations of the service contract keep to it: in process and over the API.

mypy checks the assignments below on every `make lint`; the test checks the same at run
time, parameter by parameter, so a method that drifts in one implementation fails here.
"""

from __future__ import annotations

import inspect

import pytest

from lamina.backend.service import LaminaService, Service
from lamina.backend.service.remote import RemoteService


def _in_process(service: Service) -> LaminaService:
    return service


def _remote(service: RemoteService) -> LaminaService:
    return service


CONTRACT = sorted(
    name
    for name, member in vars(LaminaService).items()
    if callable(member) and not name.startswith("_")
)


def test_the_contract_names_the_operations_front_ends_use() -> None:
    for name in ("info", "list_points", "start_restore", "start_verify", "watch_job"):
        assert name in CONTRACT


@pytest.mark.parametrize("implementation", [Service, RemoteService])
@pytest.mark.parametrize("name", CONTRACT)
def test_every_operation_has_the_contract_s_parameters(implementation: type, name: str) -> None:
    wanted = inspect.signature(getattr(LaminaService, name)).parameters
    method = getattr(implementation, name, None)
    assert callable(method), f"{implementation.__name__} has no {name}"
    got = inspect.signature(method).parameters
    assert [(p.name, p.kind) for p in got.values()] == [
        (p.name, p.kind) for p in wanted.values()
    ], f"{implementation.__name__}.{name} drifted from the contract"
