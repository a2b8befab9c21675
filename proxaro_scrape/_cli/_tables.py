"""Tables whose ids, IPs, URLs and secrets are never folded across lines.

A value a user copies (``wh_01HV...``, ``198.51.100.7``, a URL) is useless once rich folds it in
two to fit a narrow terminal.  A :class:`Listing` marks such columns as *kept*: they never wrap,
the other columns give up their width first (and fold), and when even that cannot fit the
terminal the rows are printed one field per line instead, each value whole.  :class:`Fields`
does the same for a ``name  value`` block.  Print both with :func:`show`, which never crops a
line: a value longer than the terminal stays one line, for the terminal to wrap and the mouse
to copy.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

#: The narrowest a column that may fold is given before the rows go one field per line.
MIN_FOLDED_WIDTH = 8


def _text(console: Console, cell: Any) -> Text:
    if isinstance(cell, Text):
        return cell
    return console.render_str(str(cell)) if isinstance(cell, str) else Text(str(cell))


class Listing(Table):
    """A rich table with *kept* columns (``"id:keep"`` in :func:`listing`)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.kept: set[int] = set()

    def _needed_width(self, console: Console, options: ConsoleOptions) -> int:
        width = 0
        for index, column in enumerate(self.columns):
            cells = [column.header, *column.cells]
            widest = max((console.measure(c, options=options).maximum for c in cells), default=1)
            width += (widest if index in self.kept else min(widest, MIN_FOLDED_WIDTH)) + 2
        borders = len(self.columns) + 1 if self.box and self.show_edge else len(self.columns) - 1
        return width + max(borders, 0)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.kept or self._needed_width(console, options) <= options.max_width:
            yield from super().__rich_console__(console, options)
            return
        yield from self._records(console)

    def _records(self, console: Console) -> Iterable[RenderableType]:
        """One field per line, a blank line between rows."""
        if self.title:
            yield Text(str(self.title), style="bold")
        names = [str(c.header) for c in self.columns]
        pad = max((len(n) for n in names), default=0)
        columns = [list(c.cells) for c in self.columns]
        for row in range(self.row_count):
            if row:
                yield Text("")
            for name, cells in zip(names, columns):
                line = Text.assemble((name.ljust(pad), "bold"), "  ", _text(console, cells[row]))
                line.no_wrap, line.overflow = True, "ignore"
                yield line


def listing(title: str | None, *columns: str, **kw: Any) -> Listing:
    """A :class:`Listing`; ``"name:right"`` is right-aligned, ``"name:keep"`` never folds."""
    t = Listing(title=title, title_justify="left", header_style="bold", **kw)
    for index, col in enumerate(columns):
        name, _, how = col.partition(":")
        keep = how == "keep"
        t.add_column(
            name,
            justify="right" if how == "right" else "left",
            overflow="fold",
            no_wrap=keep,
        )
        if keep:
            t.kept.add(index)
    return t


class Fields:
    """A titled ``name  value`` block, one field per line; values are never folded."""

    def __init__(self, title: str, rows: Sequence[tuple[str, Any]]) -> None:
        self.title = title
        self.rows = rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(self.title, style="bold")
        pad = max((len(name) for name, _ in self.rows), default=0)
        for name, value in self.rows:
            line = Text.assemble((name.ljust(pad), "bold"), "  ", _text(console, value))
            line.no_wrap, line.overflow = True, "ignore"
            yield line


def show(renderable: RenderableType) -> None:
    """Print on stdout without cropping lines (see the module docstring)."""
    Console(file=sys.stdout, highlight=False, soft_wrap=False).print(renderable, crop=False)
