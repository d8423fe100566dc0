"""The filesystem inside a point, as a tree that loads each folder when it is opened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from lamina.backend.service import FileEntry

from .. import formatting as fmt

NAME_WIDTH = 40
GUIDE_WIDTH = 3  # the tree's indent per level
EXPANDER_WIDTH = 2  # the ▶/▼ in front of a folder
ICONS = {"dir": "▸", "file": " ", "symlink": "↪", "other": "?"}


def header_label() -> Text:
    """The column names above the tree, over the columns entry_label draws."""
    # Names start after the expander and the mark column; sizes end where entry_label's do.
    name = " " * (EXPANDER_WIDTH + 2) + "NAME"
    return Text(f"{name:<{NAME_WIDTH}}{'SIZE':>10}  MODIFIED (UTC)", style="bold", no_wrap=True)


def entry_label(entry: FileEntry, depth: int, marked: bool) -> Text:
    label = Text(no_wrap=True, overflow="ellipsis")
    label.append("✔ " if marked else "  ", style="bold magenta")
    # Names and link targets come from the volume: escaped, and never markup.
    name = fmt.printable(entry.name) + ("/" if entry.kind == "dir" else "")
    style = {"file": "", "dir": "bold blue", "symlink": "cyan"}.get(entry.kind, "yellow")
    label.append(name, style=style)
    if entry.kind == "symlink" and entry.link_target:
        label.append(f" → {fmt.printable(entry.link_target)}", style="dim")
    indent = GUIDE_WIDTH * depth + (EXPANDER_WIDTH if entry.kind == "dir" else 0)
    width = max(NAME_WIDTH - indent, len(label.plain) + 1)
    label.pad_right(width - len(label.plain))
    size = "" if entry.kind == "dir" else fmt.size(entry.size)
    label.append(f"{size:>10}  ", style="green" if size else "")
    label.append(fmt.mtime(entry.mtime) if entry.mtime else "", style="dim")
    return label


class FileTree(Tree[FileEntry], inherit_bindings=False):
    """Tree's own keys, except space: here it marks (enter opens a folder)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "mark", "Mark", id="files.mark", key_display="space"),
        Binding("enter", "select_cursor", "Open", show=False, id="files.open"),
        Binding("up", "cursor_up", "Up", show=False, id="files.up"),
        Binding("down", "cursor_down", "Down", show=False, id="files.down"),
        Binding(
            "shift+left", "cursor_parent", "To the parent folder", show=False, id="files.parent"
        ),
        Binding(
            "shift+space", "toggle_expand_all", "Open or close all", show=False, id="files.all"
        ),
        Binding("j", "cursor_down", "Down", show=False, id="files.cursor-down"),
        Binding(
            "g,home",
            "scroll_home",
            "First entry",
            show=False,
            id="files.first",
            key_display="g/home",
        ),
        Binding(
            "G,end", "scroll_end", "Last entry", show=False, id="files.last", key_display="G/end"
        ),
        Binding("pageup", "page_up", "Page up", show=False, id="files.page-up"),
        Binding("pagedown", "page_down", "Page down", show=False, id="files.page-down"),
        Binding("k", "cursor_up", "Up", show=False, id="files.cursor-up"),
    ]

    @dataclass
    class MarkToggled(Message):
        node: TreeNode[FileEntry]

    def action_mark(self) -> None:
        node = self.cursor_node
        if node is not None and node.data is not None:
            self.post_message(self.MarkToggled(node))
