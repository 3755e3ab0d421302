"""Progress in a log file (no terminal): one line per 10%, not a silent bar."""

from __future__ import annotations

from elastic_cli import progress as common


def test_line_progress_prints_every_tenth(monkeypatch, capsys):
    lines: list[str] = []
    monkeypatch.setattr(common.console, "print", lambda text: lines.append(text))
    with common.LineProgress() as bar:
        task = bar.add_task("train", total=50, info="")
        for step in range(50):
            bar.update(task, advance=1, info=f"loss {step}")
    assert len(lines) == 10
    assert lines[0].startswith("train: 5/50 (10%) loss 4")
    assert lines[-1].startswith("train: 50/50 (100%) loss 49")


def test_progress_falls_back_to_lines_off_a_terminal():
    # pytest captures stderr, so the console is not a terminal here
    assert isinstance(common.progress(), common.LineProgress)
