"""The question asked when quitting with mounts still active: unmount, leave, or stay."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Literal

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

QuitAnswer = Literal["unmount", "leave"] | None


class QuitWithMountsScreen(ModalScreen[QuitAnswer]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "answer('unmount')", "Unmount all", id="quit.unmount"),
        Binding("l", "answer('leave')", "Leave mounted", id="quit.leave"),
        Binding("escape,n", "answer(None)", "Stay", id="quit.stay", key_display="esc/n"),
    ]

    def __init__(self, mounts: dict[str, str], running_jobs: int) -> None:
        super().__init__(classes="dialog-screen")
        self.mounts = mounts
        self.running_jobs = running_jobs

    def compose(self) -> Iterable[Any]:
        count = len(self.mounts)
        with Vertical(classes="dialog"):
            yield Label(
                f"{count} point{'' if count == 1 else 's'} still mounted. Unmount before quitting?",
                classes="dialog-title",
            )
            lines = Text()
            for point, where in sorted(self.mounts.items(), key=lambda kv: kv[1]):
                lines.append(f"{point}", style="bold")
                lines.append(" at ")
                lines.append(where, style="magenta")  # path the user typed: no markup parsing
                lines.append("\n")
            lines.append(
                "A mount left in place keeps serving after lamina quits; the next lamina tui "
                "lists it again."
            )
            if self.running_jobs:
                lines.append(
                    f"\n{self.running_jobs} job{'' if self.running_jobs == 1 else 's'} still "
                    "running will be cancelled."
                )
            yield Static(lines)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Unmount all and quit (u)", variant="error", id="unmount")
                yield Button("Leave mounted and quit (l)", id="leave")
                yield Button("Stay (n)", id="stay")

    def on_mount(self) -> None:
        self.query_one("#stay", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        answer = event.button.id
        self.dismiss(answer if answer in ("unmount", "leave") else None)  # type: ignore[arg-type]

    def action_answer(self, answer: QuitAnswer) -> None:
        self.dismiss(answer)
