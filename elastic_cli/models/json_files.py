"""Reading the JSON files of models and checkpoints: a missing, unreadable or invalid file is a UserError
that names it and says what to do, and an exception's message is cut to one line for such errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from elastic_cli.errors import UserError


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (with the next when it ends in a colon; its type's name
    when it has none), cut to `limit` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    line = lines.pop(0)
    while line.endswith(":") and lines:
        line += " " + lines.pop(0)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def read_json(path: Path, what_to_do: str) -> Any:
    """The JSON value in `path`. A missing, unreadable or invalid file is a UserError that names it and
    ends with `what_to_do`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {what_to_do}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not valid JSON (not UTF-8 text): {what_to_do}") from None
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror or first_line(err)}): {what_to_do}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}): {what_to_do}") from None


def read_json_object(path: Path, what_to_do: str) -> dict[str, Any]:
    """`read_json` of a file that must hold a JSON object."""
    value = read_json(path, what_to_do)
    if not isinstance(value, dict):
        raise UserError(f"{path} is corrupt (it holds {_json_kind(value)}, not a JSON object): {what_to_do}")
    return value
