"""The retry wrapper's backoff, over the in-memory backend."""

from __future__ import annotations

import time

import pytest

from lamina.backend.engine.storage.memory import MemoryStorage
from lamina.backend.engine.storage.wrappers import RetryingStorage
from lamina.backend.errors import StorageUnavailable


class FailingPuts(MemoryStorage):
    """Memory storage whose next ``fail_next`` puts fail as an unreachable endpoint would."""

    fail_next = 0

    def put(
        self,
        key: str,
        data: bytes | bytearray,
        *,
        if_absent: bool = False,
        retain_until: float | None = None,
    ) -> bool:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise StorageUnavailable("injected: endpoint unreachable")
        return super().put(key, data, if_absent=if_absent, retain_until=retain_until)


def test_retrying_waits_longer_after_each_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    # Waits of base * 2**n, each scaled by a random factor in [0.5, 1.5): the waits asked
    # for are recorded, not timed.
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)  # the wrapper sleeps through time.sleep
    flaky = FailingPuts()
    flaky.fail_next = 3
    assert RetryingStorage(flaky, attempts=4, base_delay=0.02).put("k", b"v")
    assert flaky.get("k") == b"v"
    assert len(waits) == 3
    for n, wait in enumerate(waits):
        assert 0.02 * 2**n * 0.5 <= wait < 0.02 * 2**n * 1.5
