"""The one exception type for bad input, and how the CLI reports it: one line on stderr, exit code 2."""

from __future__ import annotations

import re
import sys
from typing import NoReturn


class UserError(Exception):
    """Bad input a user can fix (a wrong option, a missing file, an unreachable server).

    The message is the whole report: say what is wrong and what to do.
    """


_NOISE = re.compile(r"^(full_key|object_type|reference_type|Set the environment variable HYDRA_FULL_ERROR)")


def one_line(message: str) -> str:
    """Hydra and OmegaConf errors span lines (and list the search path): keep what a user needs."""
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("Config search path"):
            break
        if line and not _NOISE.match(line):
            kept.append(line)
    return " ".join(kept)


def fail(err: BaseException) -> NoReturn:
    # a UserError raised inside an OmegaConf resolver comes wrapped in OmegaConf's own error: say it alone
    inner = err.__context__
    while inner is not None and not isinstance(inner, UserError):
        inner = inner.__context__
    if inner is not None and not isinstance(err, UserError):
        err = inner
    message = str(err)
    if err.__cause__ is not None and str(err.__cause__) not in message:
        message += f": {err.__cause__}"
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)
