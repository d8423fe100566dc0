"""The tables of every screen: a DataTable whose keys move the cursor the way k9s does."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import DataTable


class LaminaTable(DataTable[Any]):
    """``g``/Home go to the first row and ``G``/End to the last (DataTable's own Home and
    End scroll sideways, which a row cursor never wants)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(
            "g,home", "scroll_top", "First row", show=False, id="table.first", key_display="g/home"
        ),
        Binding(
            "G,end", "scroll_bottom", "Last row", show=False, id="table.last", key_display="G/end"
        ),
    ]
