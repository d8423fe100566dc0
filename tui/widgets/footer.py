"""The footer: every key of the screen, or as many as fit and a visible '…' for the rest."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer
from textual.widgets._footer import FooterKey, FooterLabel

PALETTE_WIDTH = 11  # "▏^p palette" at the right edge
MORE = "… ? all keys"


def key_width(key_display: str, description: str) -> int:
    """The cells one key takes in the footer: ' key description '."""
    return len(key_display) + len(description) + 3


class KeyFooter(Footer):
    """Textual's footer, which would cut keys off at the right edge without a word.

    Keys keep the screen's order (its own first, the app's last); those that do not fit
    the width give way to a '… ? all keys' label, and the help lists every one.
    """

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        items = list(self._items())
        self.styles.grid_size_columns = len(items)  # one row: a column for each item
        yield from items

    def _items(self) -> ComposeResult:
        active = self.screen.active_bindings
        shown: dict[str, tuple[Binding, bool, str]] = {}
        for _, binding, enabled, tooltip in active.values():
            if binding.show:
                shown.setdefault(binding.action, (binding, enabled, tooltip))
        room = (self.size.width or self.app.size.width) - PALETTE_WIDTH
        keys = [(b, e, t, self.app.get_key_display(b)) for b, e, t in shown.values()]
        total = sum(key_width(display, b.description) for b, _, _, display in keys)
        if total > room:
            room -= len(MORE) + 1
        used = 0
        cut = False
        for binding, enabled, tooltip, display in keys:
            width = key_width(display, binding.description)
            if used + width > room and total > room:
                cut = True
                break
            used += width
            yield FooterKey(
                binding.key,
                display,
                binding.description,
                binding.action,
                disabled=not enabled,
                tooltip=tooltip,
            ).data_bind(compact=Footer.compact)
        if cut:
            yield FooterLabel(MORE, id="footer-more")
        if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE:
            try:
                _, binding, enabled, tooltip = active[self.app.COMMAND_PALETTE_BINDING]
            except KeyError:
                return
            yield FooterKey(
                binding.key,
                self.app.get_key_display(binding),
                binding.description,
                binding.action,
                classes="-command-palette",
                disabled=not enabled,
                tooltip=binding.tooltip or binding.description,
            )

    _composed_width = 0

    def on_resize(self, event: events.Resize) -> None:
        # Only a new width changes what fits (a recompose resizes the content, not the bar).
        if self._bindings_ready and event.size.width != self._composed_width:
            self._composed_width = event.size.width
            self.call_after_refresh(self.recompose)
