"""The command palette (ctrl+p): every action of the current screen and of the app, by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from .screens.dialogs import key_label


class LaminaCommands(Provider):
    """Actions come from the key bindings, so the palette and the keys never disagree."""

    def _commands(self) -> Iterator[tuple[str, str, Callable[[], Any]]]:
        seen: set[str] = set()
        for active in self.screen.active_bindings.values():
            binding = active.binding
            if not binding.id or not active.enabled or binding.id in seen:
                continue
            if binding.action in ("command_palette", "cursor_down", "cursor_up"):
                continue
            seen.add(binding.id)
            run = partial(self.app.run_action, binding.action, active.node)
            yield binding.description, f"key: {key_label(binding)}", run
        for view in ("clusters", "volumes", "jobs", "history", "schedules"):
            yield f"Go to {view}", f":{view}", partial(self.app.run_action, f"goto('{view}')")

    async def discover(self) -> Hits:
        for name, help_text, run in self._commands():
            yield DiscoveryHit(name, run, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, run in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), run, help=help_text)
