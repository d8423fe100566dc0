"""lamina's terminal UI: clusters, volumes, chains, files, jobs, history and schedules, k9s style.

Build it with ``make_app(service)``: a ``LaminaService``, in process or remote, is the
only way to the backend (see ``client.py``). Blocking calls run in worker threads and come back as messages; job
progress arrives through the ``JobFeed``, merged so that the screen redraws at most
about ten times a second however fast a backup reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.screen import Screen

from lamina.backend.service import Capabilities, JobView, LaminaService
from lamina.backend.units import plural

from .client import mounted_points, unmount_point
from .commands import LaminaCommands
from .formatting import printable
from .jobfeed import JobFeed
from .messages import ActionFailed, JobsPending, JobStarted, JobsUpdated
from .screens.base import LaminaScreen, plain_error
from .screens.clusters import ClustersScreen
from .screens.dialogs import ConfirmScreen, GotoScreen, HelpScreen
from .screens.history import HistoryScreen
from .screens.jobs import JobsScreen
from .screens.quit import QuitAnswer, QuitWithMountsScreen
from .screens.schedules import SchedulesScreen
from .screens.volumes import VolumesScreen

Clock = Callable[[], float]
CRUMB = " \N{SINGLE RIGHT-POINTING ANGLE QUOTATION MARK} "


class LaminaApp(App[None]):
    TITLE = "lamina"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {LaminaCommands}
    ENABLE_COMMAND_PALETTE = True

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "request_quit", "Quit", id="quit"),
        Binding("question_mark", "help", "Help", id="help", key_display="?"),
        Binding("colon", "command_line", "Go to", id="goto", key_display=":"),
        Binding("J", "goto('jobs')", "Jobs", id="jobs", show=False),
        Binding("H", "goto('history')", "History", id="history", show=False),
        Binding("T", "goto('schedules')", "Schedules", id="schedules", show=False),
    ]

    def __init__(
        self,
        service: LaminaService,
        *,
        clock: Clock = time.time,
        check_timeout: float = 3.0,
        feed_interval: float = 0.1,
        work_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.service = service
        self.clock = clock
        self.work_dir = work_dir or os.getcwd()  # where suggested restore and extract paths go
        self.check_timeout = check_timeout
        self.capabilities = Capabilities()
        self.repository_label = ""
        self.compare_with = ""  # the repository last compared with (offered again)
        self.job_views: dict[str, JobView] = {}
        self.feed = JobFeed(self.post_message, feed_interval)
        self._unwatch: dict[str, Callable[[], None]] = {}
        self._unwatch_lock = threading.Lock()
        self._last_drain = 0.0
        self._drain_scheduled = False
        self.age_interval = 10.0  # seconds between redraws of ages ("3m ago")
        self.started = False  # the repository summary and capabilities are in
        self.redraws = 0  # job updates delivered to the screens (for measurements)

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Every notification, from any screen, as plain escaped text.

        Notifications quote names, paths and server replies: never markup, never a raw
        control character, whatever the caller asked for.
        """
        super().notify(
            printable(message),
            title=printable(title),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """Textual's own commands, less its Quit: ours asks first when jobs are running."""
        for command in super().get_system_commands(screen):
            if command.title != "Quit":
                yield command

    def get_default_screen(self) -> Screen[None]:
        return ClustersScreen()

    def on_mount(self) -> None:
        if not self.is_headless:  # SIGTERM quits like `:q!`, so every cleanup runs
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.action_quit_now)
        self.startup()

    @work(thread=True, group="startup")
    def startup(self) -> None:
        try:
            summary = self.service.info()
            capabilities = self.service.capabilities()
            jobs = self.service.job_views()
        except Exception as e:
            self.post_message(ActionFailed("open the repository", plain_error(e)))
            return
        label = summary.url + ("  (encrypted)" if summary.encrypted else "")
        if summary.server:  # the header says when the repository is a server's, first
            label = f"server {summary.server}: {label}"
        self.call_from_thread(self._started, label, capabilities, jobs)
        for view in jobs:
            if not view.finished:
                self._watch(view.id)

    def _started(self, label: str, capabilities: Capabilities, jobs: list[JobView]) -> None:
        """The repository answered; jobs that ran before the UI opened are listed, quietly."""
        self.repository_label = label
        self.capabilities = capabilities
        for view in jobs:
            self.job_views.setdefault(view.id, view)
        from .widgets.bars import TopBar

        for screen in self.screen_stack:
            for bar in screen.query(TopBar):
                bar.repository = label
                bar.set_crumbs(bar.crumbs)
            screen.refresh_bindings()
            if isinstance(screen, LaminaScreen):
                screen.post_message(JobsUpdated(list(jobs)))
        self.started = True

    def resolve_path(self, typed: str) -> str:
        """A path the user typed: '~' expanded, relative to the working folder."""
        return os.path.join(self.work_dir, os.path.expanduser(typed.strip()))

    # ------------------------------------------------------------------ jobs

    @work(thread=True, group="jobs")
    def start_job(self, what: str, start: Callable[[], str]) -> None:
        """Start a job with a blocking client call, then follow its progress."""
        try:
            job_id = start()
        except Exception as e:
            self.post_message(ActionFailed(what, plain_error(e)))
            return
        self._follow(job_id, what)

    @work(thread=True, group="jobs")
    def follow_job(self, job_id: str, what: str) -> None:
        """Show a job started elsewhere (a dialog) in the job strip and follow its progress."""
        self._follow(job_id, what)

    def _follow(self, job_id: str, what: str) -> None:
        self.post_message(JobStarted(job_id, what))
        self._watch(job_id)

    def _watch(self, job_id: str) -> None:
        try:
            unwatch = self.service.watch_job(job_id, self.feed.push)
        except Exception as e:
            self.post_message(ActionFailed(f"follow job {job_id}", plain_error(e)))
            return
        with self._unwatch_lock:
            self._unwatch[job_id] = unwatch

    @on(JobStarted)
    def _job_started(self, message: JobStarted) -> None:
        """The job strip shows it from now on; nothing to announce."""

    @on(JobsPending)
    def _jobs_pending(self) -> None:
        if self._drain_scheduled:
            return
        wait = self._last_drain + self.feed.min_interval - time.monotonic()
        if wait > 0:
            self._drain_scheduled = True
            self.set_timer(wait, self._drain_jobs)
        else:
            self._drain_jobs()

    def _drain_jobs(self) -> None:
        self._drain_scheduled = False
        self._last_drain = time.monotonic()
        views = self.feed.take()
        if not views:
            return
        changed = []
        for view in views:
            before = self.job_views.get(view.id)
            if before is not None and before.finished and not view.finished:
                continue
            self.job_views[view.id] = view
            changed.append(view)
            if view.finished and (before is None or not before.finished):
                self._job_finished(view)
        self.redraws += 1
        for screen in self.screen_stack:
            if isinstance(screen, LaminaScreen):
                screen.post_message(JobsUpdated(changed))

    def _job_finished(self, view: JobView) -> None:
        with self._unwatch_lock:
            unwatch = self._unwatch.pop(view.id, None)
        if unwatch is not None:
            unwatch()
        if view.state == "succeeded":
            self.notify(view.summary or view.description, title=f"{view.kind} done", timeout=6)
        elif view.state == "cancelled":
            self.notify(
                f"{view.description}: cancelled",
                title=f"{view.kind} cancelled",
                severity="warning",
                timeout=6,
            )
        else:
            self.notify(
                f"{view.description} failed: {view.error or 'unknown error'}",
                title=f"{view.kind} failed",
                severity="error",
                timeout=12,
            )

    def cancel_job(self, job_id: str) -> None:
        self.notify("cancelling…", timeout=2)
        self._cancel(job_id)

    @work(thread=True, group="cancel")
    def _cancel(self, job_id: str) -> None:
        try:
            self.service.cancel_job(job_id)
        except Exception as e:
            self.post_message(ActionFailed(f"cancel job {job_id}", plain_error(e)))

    # ------------------------------------------------------------------ errors

    @on(ActionFailed)
    def _action_failed(self, message: ActionFailed) -> None:
        self.notify(
            f"could not {message.what}: {message.reason}",
            title="error",
            severity="error",
            timeout=10,
        )

    # ------------------------------------------------------------------ navigation

    def action_help(self) -> None:
        screen = self.screen
        if isinstance(screen, HelpScreen):
            return
        crumbs = screen.crumbs() if isinstance(screen, LaminaScreen) else []
        self.push_screen(HelpScreen(CRUMB.join(crumbs) or "lamina", screen.active_bindings))

    def action_command_line(self) -> None:
        clusters: list[str] = []
        base = self.screen_stack[0]
        if isinstance(base, ClustersScreen):
            clusters = [c.name for c in base.items]
        self.push_screen(GotoScreen(clusters), self.goto)

    def action_goto(self, view: str) -> None:
        self.goto(view)

    def last_cluster(self) -> str | None:
        for screen in reversed(self.screen_stack):
            if isinstance(screen, VolumesScreen):
                return screen.cluster
            cluster = getattr(getattr(screen, "volume", None), "cluster", None)
            if cluster:
                return str(cluster)
        base = self.screen_stack[0]
        if isinstance(base, ClustersScreen):
            item = base.current_item()
            if item is not None:
                return item.name
        return None

    def goto(self, command: str | None) -> None:
        if not command:
            return
        word, _, argument = command.strip().lstrip(":").partition(" ")
        word = word.lower()
        if word in ("q", "quit", "q!"):
            if word == "q!":
                self.action_quit_now()
            else:
                self.action_request_quit()
        elif word in ("help", "h"):
            self.action_help()
        elif word in ("clusters", "cluster", "ctx", "contexts"):
            self._to_base()
        elif word in ("volumes", "volume", "pvc", "pvcs", "vol"):
            cluster = argument.strip() or self.last_cluster()
            if not cluster:
                self.notify("which cluster? :volumes CLUSTER", severity="warning")
                return
            base = self.screen_stack[0]
            known = [c.name for c in base.items] if isinstance(base, ClustersScreen) else []
            if known and cluster not in known:
                self.notify(
                    f"no cluster {cluster!r}: try {', '.join(known)}", severity="warning", timeout=5
                )
                return
            self._to_base()
            self.push_screen(VolumesScreen(cluster))
        elif word in ("jobs", "job"):
            if not isinstance(self.screen, JobsScreen):
                self.push_screen(JobsScreen())
        elif word in ("history", "hist"):
            if not isinstance(self.screen, HistoryScreen):
                self.push_screen(HistoryScreen())
        elif word in ("schedules", "schedule", "sched"):
            if not isinstance(self.screen, SchedulesScreen):
                self.push_screen(SchedulesScreen())
        else:
            self.notify(
                f"no view {word!r}: try :clusters, :volumes, :jobs, :history, :schedules",
                severity="warning",
                timeout=5,
            )

    def _to_base(self) -> None:
        while len(self.screen_stack) > 1:
            self.pop_screen()

    def action_request_quit(self) -> None:
        if self.capabilities.mount:
            self._look_for_mounts_then_quit()  # asking for the mounts may block: not here
        else:
            self._ask_before_quit({})

    @work(thread=True, group="quit")
    def _look_for_mounts_then_quit(self) -> None:
        try:
            mounts = mounted_points(self.service)
        except Exception as e:  # quitting must stay possible when the backend is gone
            self.post_message(ActionFailed("list the mounts", plain_error(e)))
            mounts = {}
        self.call_from_thread(self._ask_before_quit, mounts)

    def _ask_before_quit(self, mounts: dict[str, str]) -> None:
        """Mounts outlive the UI: say so and offer to unmount. Else ask about running jobs."""
        running = [v for v in self.job_views.values() if not v.finished]
        if mounts:

            def decided(answer: QuitAnswer) -> None:
                if answer == "unmount":
                    self._unmount_and_exit(list(mounts), [v.id for v in running])
                elif answer == "leave":
                    self._cancel_all_and_exit([v.id for v in running])

            self.push_screen(QuitWithMountsScreen(mounts, len(running)), decided)
            return
        if not running:
            self.exit()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._cancel_all_and_exit([v.id for v in running])

        self.push_screen(
            ConfirmScreen(
                f"{plural(len(running), 'job')} still running. Cancel "
                f"{'it' if len(running) == 1 else 'them'} and quit?",
                "A cancelled backup leaves no point behind; earlier points stay intact.",
                confirm_label="Cancel jobs and quit",
                cancel_label="Stay",
            ),
            answer,
        )

    def action_quit_now(self) -> None:
        self._cancel_all_and_exit([v.id for v in self.job_views.values() if not v.finished])

    @work(thread=True, group="quit")
    def _unmount_and_exit(self, point_ids: list[str], job_ids: list[str]) -> None:
        """Unmount every point, then quit; a mount that will not go keeps the UI open."""
        failed = False
        for point_id in point_ids:
            try:
                unmount_point(self.service, point_id)
            except Exception as e:
                failed = True
                self.post_message(ActionFailed(f"unmount {point_id}", plain_error(e)))
        if not failed:
            self.call_from_thread(self._cancel_all_and_exit, job_ids)

    @work(thread=True, group="quit")
    def _cancel_all_and_exit(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            try:
                self.service.cancel_job(job_id)
            except Exception:
                pass
        deadline = time.monotonic() + 5.0
        while job_ids and time.monotonic() < deadline:
            try:
                if all(self.service.job_view(j).finished for j in job_ids):
                    break
            except Exception:
                break
            time.sleep(0.05)
        self.call_from_thread(self.exit)


def make_app(
    service: LaminaService,
    *,
    clock: Clock = time.time,
    check_timeout: float = 3.0,
    work_dir: str | None = None,
) -> LaminaApp:
    """The app factory: tests and screenshots build the app the way the CLI does."""
    return LaminaApp(service, clock=clock, check_timeout=check_timeout, work_dir=work_dir)
