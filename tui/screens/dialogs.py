"""Small modal dialogs: ask for a path, confirm, the ':' command line and the help."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.binding import ActiveBinding, Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Static

from lamina.backend.service import TargetExists

from ..formatting import printable, shown
from .base import plain_error

VIEWS = ["clusters", "volumes", "jobs", "history", "schedules", "help", "quit"]


class PromptScreen(ModalScreen[str | None]):
    """Ask for one line (a path); enter accepts, esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="prompt.cancel", key_display="esc"),
    ]

    def __init__(
        self, title: str, value: str = "", *, hint: str = "", password: bool = False
    ) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.value = value
        self.hint = hint
        self.password = password  # typed characters are not shown

    def compose(self) -> Iterable[Any]:
        with Vertical(classes="dialog"):
            yield Label(shown(self.title_text), classes="dialog-title")
            yield Input(self.value, id="prompt-input", password=self.password)
            # The hint may quote a server's reply: escaped, as everything shown is.
            yield Static(
                shown(self.hint, "dim")
                + Text(("\n" if self.hint else "") + "enter: OK   esc: cancel", style="dim"),
                classes="dialog-hint",
            )

    @on(Input.Submitted, "#prompt-input")
    def _submitted(self, event: Input.Submitted) -> None:
        # A password is taken as typed: its spaces may be part of it.
        self.dismiss((event.value if self.password else event.value.strip()) or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RestoreScreen(ModalScreen[str | None]):
    """Ask where to restore, and start the restore from here: the service checks the
    target first, and a problem keeps the dialog open with its one line. An existing file
    is offered for overwriting (ctrl+o) instead of failing. Dismissed with the job id."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="restore.cancel", key_display="esc"),
        Binding("ctrl+o", "overwrite", "Overwrite", id="restore.overwrite", priority=True),
    ]

    def __init__(
        self, title: str, value: str, start: Callable[[str, bool], str], *, hint: str = ""
    ) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.value = value
        self.start = start  # (target, overwrite) -> job id; raises with one plain line
        self.hint = hint
        self.existing: str | None = None  # the target the service said exists
        self.problem = ""

    def compose(self) -> Iterable[Any]:
        with Vertical(classes="dialog"):
            yield Label(shown(self.title_text), classes="dialog-title")
            yield Input(self.value, id="restore-input")
            yield Static("", id="restore-problem", classes="dialog-problem")
            with Horizontal(classes="dialog-buttons", id="restore-overwrite-row"):
                yield Button("Overwrite (ctrl+o)", variant="error", id="restore-overwrite")
            yield Static(
                Text(
                    (self.hint + "\n" if self.hint else "") + "enter: restore   esc: cancel",
                    style="dim",
                ),
                classes="dialog-hint",
            )

    def on_mount(self) -> None:
        self.query_one("#restore-overwrite-row").display = False

    def _show(self, problem: str, existing: str | None) -> None:
        self.problem = problem
        self.existing = existing
        self.query_one("#restore-problem", Static).update(shown(problem, "bold red"))
        self.query_one("#restore-overwrite-row").display = existing is not None

    @on(Input.Changed, "#restore-input")
    def _changed(self, event: Input.Changed) -> None:
        if self.existing is not None and event.value.strip() != self.existing:
            self._show("", None)  # another path: the offer was for the old one

    @on(Input.Submitted, "#restore-input")
    def _submitted(self, event: Input.Submitted) -> None:
        target = event.value.strip()
        if target:
            self._try(target, False)

    @on(Button.Pressed, "#restore-overwrite")
    def _overwrite_pressed(self) -> None:
        self.action_overwrite()

    def action_overwrite(self) -> None:
        if self.existing is not None:
            self._try(self.existing, True)

    @work(thread=True, exclusive=True, group="restore-dialog")
    def _try(self, target: str, overwrite: bool) -> None:
        try:
            job_id = self.start(target, overwrite)
        except TargetExists as e:
            self.app.call_from_thread(self._show, plain_error(e), target)
            return
        except Exception as e:
            self.app.call_from_thread(self._show, plain_error(e), None)
            return
        self.app.call_from_thread(self.dismiss, job_id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,n", "answer(False)", "No", id="confirm.no", key_display="esc/n"),
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
    ]

    def __init__(
        self, title: str, text: str = "", *, confirm_label: str = "Yes", cancel_label: str = "No"
    ) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.text = text
        self.confirm_label = confirm_label
        self.cancel_label = cancel_label

    def compose(self) -> Iterable[Any]:
        with Vertical(classes="dialog"):
            yield Label(shown(self.title_text), classes="dialog-title")
            if self.text:
                yield Static(shown(self.text))
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (y)", variant="error", id="yes")
                yield Button(f"{self.cancel_label} (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class GotoScreen(ModalScreen[str | None]):
    """k9s' command line: ':clusters', ':volumes [cluster]', ':jobs'."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="goto.cancel", key_display="esc"),
    ]

    def __init__(self, clusters: list[str]) -> None:
        super().__init__(classes="goto-screen")
        self.clusters = clusters

    def compose(self) -> Iterable[Any]:
        choices = VIEWS + [f"volumes {printable(c)}" for c in self.clusters]
        with Horizontal(id="goto-line"):
            yield Label(":", id="goto-prompt")
            yield Input(
                placeholder="clusters | volumes [CLUSTER] | jobs | history | schedules | help | quit",
                suggester=SuggestFromList(choices, case_sensitive=False),
                id="goto-input",
            )

    @on(Input.Submitted, "#goto-input")
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


KEY_NAMES = {"slash": "/", "question_mark": "?", "colon": ":", "escape": "esc", "space": "space"}


def key_label(binding: Binding) -> str:
    if binding.key_display:
        return binding.key_display
    return ", ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in binding.key.split(","))


class HelpScreen(ModalScreen[None]):
    """Every key of the screen below, and the conventions shared by all screens."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close", id="help.close", key_display="esc"),
    ]

    def __init__(self, title: str, bindings: dict[str, ActiveBinding]) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.bindings = bindings

    def compose(self) -> Iterable[Any]:
        table = Table.grid(padding=(0, 3))
        table.add_column(style="bold cyan", min_width=10)
        table.add_column()
        seen: set[str] = set()
        for active in self.bindings.values():
            binding = active.binding
            if not binding.id or not active.enabled or binding.id in seen:
                continue
            seen.add(binding.id)
            table.add_row(key_label(binding), binding.description)
        with VerticalScroll(classes="dialog help"):
            yield Label(shown(f"Keys: {self.title_text}"), classes="dialog-title")
            yield Static(table)
            yield Static(
                Text(
                    ":clusters, :volumes, :jobs, :history, :schedules go to a view; / filters a "
                    "table; esc goes back; "
                    "ctrl+p finds any action by name. Jobs keep running while you browse.",
                    style="dim",
                ),
                classes="dialog-hint",
            )

    def action_close(self) -> None:
        self.dismiss(None)
