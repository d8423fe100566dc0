"""Files inside a point: browse the tree, preview a file, mark and extract."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Input, Static, Tree
from textual.widgets.tree import TreeNode

from lamina.backend.service import FileEntry, PointInfo
from lamina.backend.units import plural

from .. import formatting as fmt
from ..client import start_extract
from ..formatting import shown
from ..messages import FilesLoaded, PreviewLoaded
from ..widgets.filetree import GUIDE_WIDTH, FileTree, entry_label, header_label
from .base import FilteredScreen, plain_error
from .dialogs import PromptScreen

PREVIEW_BYTES = 64 * 1024


def preview_text(data: bytes, size: int) -> Text:
    """Text as text, every control escaped (no colour codes drawn); else a short hex dump."""
    if b"\0" not in data[:8192]:
        try:
            text = Text(fmt.printable_lines(data.decode("utf-8")), no_wrap=False)
            if size > len(data):
                text.append(f"\n… first {fmt.size(len(data))} of {fmt.size(size)}", style="dim")
            return text
        except UnicodeDecodeError:
            pass
    out = Text(f"binary file, {fmt.size(size)}; first bytes:\n", style="dim")
    for offset in range(0, min(len(data), 256), 16):
        chunk = data[offset : offset + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"{offset:08x}  {hexes:<47}  {shown}\n")
    return out


class FilesScreen(FilteredScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "extract", "Extract", id="files.extract"),
        Binding("slash", "filter", "Filter", id="files.filter", key_display="/"),
        Binding("u", "clear_marks", "Unmark all", id="files.unmark", show=False),
    ]

    AUTO_FOCUS = "#file-tree"

    def __init__(self, point: PointInfo) -> None:
        super().__init__()
        self.point = point
        self.marked: dict[str, FileEntry] = {}
        self.loaded: set[str] = set()
        self.nodes: dict[str, TreeNode[FileEntry]] = {}
        self.entries: dict[str, list[FileEntry]] = {}  # each loaded folder's entries
        self.root_loaded = False

    def crumbs(self) -> list[str]:
        volume = self.point.volume
        cluster, namespace, name = volume.cluster, volume.namespace, volume.name
        return ["clusters", cluster, f"{namespace}/{name}", self.point.id, "files"]

    def compose(self) -> Iterable[Any]:
        yield self.compose_top()
        with Horizontal(id="files-body"):
            root = FileEntry.folder("/", "/")
            tree = FileTree(
                shown(f"{self.point.volume} @ {self.point.id}"), data=root, id="file-tree"
            )
            tree.show_root = False
            tree.guide_depth = GUIDE_WIDTH
            with Vertical(id="files-left"):
                yield Input(
                    placeholder="filter names…  (enter keeps it, esc clears it)", id="filter"
                )
                yield Static(header_label(), id="file-header")
                yield tree
            with VerticalScroll(id="file-detail"):
                yield Static(id="file-info")
                yield Static(id="file-preview")
        yield from self.compose_bottom()

    @property
    def file_tree(self) -> FileTree:
        return self.query_one("#file-tree", FileTree)

    def on_mount(self) -> None:
        tree = self.file_tree
        tree.focus()
        tree.loading = True
        self.nodes["/"] = tree.root
        self.list_folder("/")
        self.query_one("#file-info", Static).update(
            Text("space marks files and folders, x extracts them.", style="dim")
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "extract" and not self.lamina.capabilities.extract:
            return False
        return super().check_action(action, parameters)

    # ------------------------------------------------------------------ loading

    @work(thread=True, group="files")
    def list_folder(self, path: str) -> None:
        try:
            entries = self.service.list_files(self.point.id, path)
        except Exception as e:
            self.post_message(FilesLoaded(self.point.id, path, [], plain_error(e)))
            return
        self.post_message(FilesLoaded(self.point.id, path, entries))

    @on(FilesLoaded)
    def _files_loaded(self, message: FilesLoaded) -> None:
        tree = self.file_tree
        tree.loading = False
        self.refresh_bindings()  # the focused widget was hidden while loading
        node = self.nodes.get(message.path)
        if message.error:
            self.fail(f"list {message.path}", message.error)
            if node is not None and node is not tree.root and node.data is not None:
                label = entry_label(node.data, self.depth(node.data.path), False)
                label.append(f"  cannot open: {fmt.printable(message.error)}", style="red")
                node.set_label(label)
            return
        if node is None:
            return
        entry = node.data
        if node is not tree.root and entry is not None:
            node.set_label(entry_label(entry, self.depth(entry.path), entry.path in self.marked))
        self.loaded.add(message.path)
        self.entries[message.path] = sorted(
            message.entries, key=lambda e: (e.kind != "dir", e.name)
        )
        self.fill(node, message.path, set())
        if node is tree.root:
            self.root_loaded = True
            if node.children and tree.cursor_node is None:
                tree.move_cursor(node.children[0])
            if not message.entries:
                self.query_one("#file-info", Static).update(
                    Text("this point's filesystem is empty", style="dim")
                )
        node.expand()

    def fill(self, node: TreeNode[FileEntry], folder: str, expanded: set[str]) -> None:
        """Put the shown entries of a loaded folder under its node, and of loaded subfolders
        that were open under theirs."""
        node.remove_children()
        depth = 0 if folder == "/" else self.depth(folder) + 1
        for entry in self.shown_entries(folder):
            label = entry_label(entry, depth, entry.path in self.marked)
            if entry.kind == "dir":
                child = node.add(label, data=entry, allow_expand=True)
                if entry.path in self.entries:
                    self.fill(child, entry.path, expanded)
                    if entry.path in expanded:
                        child.expand()
            else:
                child = node.add_leaf(label, data=entry)
            self.nodes[entry.path] = child

    def shown_entries(self, folder: str) -> list[FileEntry]:
        """A folder's entries that the filter lets through: names holding the text, and
        folders with such a name somewhere below (among the folders loaded so far)."""
        entries = self.entries.get(folder, [])
        if not self.filter_text:
            return entries
        needle = self.filter_text.lower()

        def matches(entry: FileEntry) -> bool:
            if needle in entry.name.lower():
                return True
            return entry.kind == "dir" and any(matches(e) for e in self.entries.get(entry.path, []))

        return [e for e in entries if matches(e)]

    def redraw_tree(self) -> None:
        tree = self.file_tree
        cursor = tree.cursor_node.data.path if tree.cursor_node and tree.cursor_node.data else None
        expanded = {path for path, node in self.nodes.items() if node.is_expanded}
        self.nodes = {"/": tree.root}
        self.fill(tree.root, "/", expanded)
        target = self.nodes.get(cursor) if cursor else None
        if target is None and tree.root.children:
            target = tree.root.children[0]
        if target is not None:
            tree.move_cursor(target)

    # ------------------------------------------------------------------ filter

    def filter_changed(self) -> None:
        self.redraw_tree()

    def filter_done(self) -> None:
        self.file_tree.focus()

    @staticmethod
    def depth(path: str) -> int:
        """How deep an entry sits in the tree: '/a' is 0, '/a/b' is 1."""
        return len([p for p in path.split("/") if p]) - 1

    @on(Tree.NodeExpanded, "#file-tree")
    def _expanded(self, event: Tree.NodeExpanded[FileEntry]) -> None:
        entry = event.node.data
        if entry is None or entry.kind != "dir" or entry.path in self.loaded:
            return
        event.node.set_label(Text.assemble(event.node.label, ("  loading…", "dim italic")))
        self.list_folder(entry.path)

    @on(Tree.NodeHighlighted, "#file-tree")
    def _highlighted(self, event: Tree.NodeHighlighted[FileEntry]) -> None:
        entry = event.node.data
        if entry is None:
            return
        self.show_entry(entry)
        preview = self.query_one("#file-preview", Static)
        if entry.kind == "file":
            preview.update(Text("loading preview…", style="dim italic"))
            self.load_preview(entry)
        else:
            preview.update("")

    @work(thread=True, exclusive=True, group="preview")
    def load_preview(self, entry: FileEntry) -> None:
        try:
            data = self.service.read_file(self.point.id, entry.path, length=PREVIEW_BYTES)
        except Exception as e:
            self.post_message(PreviewLoaded(self.point.id, entry.path, None, plain_error(e)))
            return
        self.post_message(PreviewLoaded(self.point.id, entry.path, data))

    @on(PreviewLoaded)
    def _preview_loaded(self, message: PreviewLoaded) -> None:
        node = self.file_tree.cursor_node
        if node is None or node.data is None or node.data.path != message.path:
            return  # the cursor moved on
        preview = self.query_one("#file-preview", Static)
        if message.error is not None or message.data is None:
            preview.update(shown(f"no preview: {message.error}", style="yellow"))
            return
        preview.update(preview_text(message.data, node.data.size))

    def show_entry(self, entry: FileEntry) -> None:
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="dim")
        facts.add_column()
        facts.add_row("path", shown(entry.path, style="bold"))
        facts.add_row("kind", shown(entry.kind))
        if entry.kind != "dir":
            facts.add_row("size", f"{fmt.size(entry.size)} ({entry.size:,} bytes)")
        if entry.mtime:
            facts.add_row("modified", fmt.mtime(entry.mtime) + " UTC")
        if entry.mode:
            facts.add_row("mode", f"{entry.mode & 0o7777:04o}")
        if entry.link_target:
            facts.add_row("target", shown(entry.link_target))
        marks = f"{len(self.marked)} marked" if self.marked else "nothing marked"
        self.query_one("#file-info", Static).update(Group(facts, Text(marks, style="magenta")))

    # ------------------------------------------------------------------ marks and extract

    @on(FileTree.MarkToggled)
    def _mark(self, message: FileTree.MarkToggled) -> None:
        node = message.node
        entry = node.data
        if entry is None:
            return
        if entry.path in self.marked:
            del self.marked[entry.path]
        else:
            self.marked[entry.path] = entry
        node.set_label(entry_label(entry, self.depth(entry.path), entry.path in self.marked))
        self.show_entry(entry)
        self.file_tree.action_cursor_down()

    def action_clear_marks(self) -> None:
        for path, entry in list(self.marked.items()):
            del self.marked[path]
            node = self.nodes.get(path)
            if node is not None:
                node.set_label(entry_label(entry, self.depth(path), False))

    def action_extract(self) -> None:
        paths = sorted(self.marked)
        if not paths:
            node = self.file_tree.cursor_node
            if node is None or node.data is None:
                self.notify("mark files or folders with space first", severity="warning")
                return
            paths = [node.data.path]
        suggestion = os.path.join(
            self.lamina.work_dir, fmt.printable(f"extract-{self.point.id[:8]}")
        )
        what = plural(len(paths), "item") if len(paths) > 1 else paths[0]

        def extract(target: str | None) -> None:
            if not target:
                return
            folder = self.lamina.resolve_path(target)
            self.lamina.start_job(
                f"extract {what}",
                lambda: start_extract(self.service, self.point.id, paths, folder),
            )
            self.action_clear_marks()

        self.app.push_screen(
            PromptScreen(f"Extract {what} from {self.point.id} into the folder", suggestion),
            extract,
        )
