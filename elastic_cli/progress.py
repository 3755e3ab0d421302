"""The console every stage prints to (stderr) and progress bars on long work."""

from __future__ import annotations

import os
from collections.abc import Mapping

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Off a terminal (a pipe, a job's log file) rich assumes 80 columns and squeezes tables into wrapped cells;
# nothing reads that output at a width, so give tables room: $COLUMNS when set, else this (a 24-exit sweep
# table is about 270 wide).
WIDTH_OFF_A_TERMINAL = 400


def fit_width(console: Console, environ: Mapping[str, str] | None = None) -> Console:
    """`console`, at the terminal's width when it writes to one, else at $COLUMNS or WIDTH_OFF_A_TERMINAL."""
    if not console.is_terminal:
        columns = (os.environ if environ is None else environ).get("COLUMNS", "")
        console.width = (
            int(columns) if columns.strip().isdigit() and int(columns) > 0 else WIDTH_OFF_A_TERMINAL
        )
    return console


# soft wrap: a long path in a log line stays on one line (grep finds it), whatever the width
console = fit_width(Console(stderr=True, soft_wrap=True))


class LineProgress:
    """Progress as plain lines (one per 10%) when stderr is not a terminal, e.g. a cluster job's log
    file, where a live bar would print nothing until the end."""

    def __init__(self) -> None:
        self.tasks: dict[TaskID, dict] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float, info: str = "") -> TaskID:
        task_id = TaskID(len(self.tasks))
        self.tasks[task_id] = {
            "description": description,
            "total": total,
            "done": 0.0,
            "next": 0.1,
            "info": info,
        }
        return task_id

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: TaskID, advance: float = 0, info: str | None = None) -> None:
        t = self.tasks[task_id]
        t["done"] += advance
        if info is not None:
            t["info"] = info
        fraction = t["done"] / t["total"] if t["total"] else 1.0
        if fraction >= t["next"] - 1e-9:
            console.print(
                f"{t['description']}: {t['done']:.0f}/{t['total']:.0f} ({100 * fraction:.0f}%) {t['info']}"
            )
            while t["next"] <= fraction + 1e-9:
                t["next"] += 0.1


def progress() -> Progress | LineProgress:
    if not console.is_terminal:
        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
