"""Writing files without losing any: atomic replacement, temporary names that say whose they are, the
user's umask (a team reads shared checkpoints), and content hashes.

A temporary file or folder is named `.<target>.tmp-<host>-<pid>-<random>` beside its target, so a later
save can tell an orphan of a killed process (same host, pid gone) from a save in progress, and
removes only the former.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

_HOST = socket.gethostname().replace("-", "_") or "host"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """mkdtemp and mkstemp create 0700/0600: give the path the mode a plain mkdir/open would have."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def apply_umask_tree(root: Path) -> None:
    """apply_umask on `root` and everything under it (some writers, e.g. safetensors, create 0600)."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            apply_umask(path)


def _prefix(target: Path) -> str:
    return f".{target.name}.tmp-{_HOST}-{os.getpid()}-"


def temp_dir(target: Path) -> Path:
    """A new empty folder beside `target`, to be filled and then swapped in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
    apply_umask(path)
    return path


def temp_file(target: Path) -> Path:
    """A new empty file beside `target`, to be written and then moved over it with os.replace."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
    os.close(fd)
    path = Path(name)
    apply_umask(path)
    return path


def aside_name(target: Path) -> Path:
    """A fresh, unused name beside `target` to move it to before deleting it (never a name a user
    could have chosen, such as `<target>.old`)."""
    return target.with_name(f"{_prefix(target)}old-{os.urandom(4).hex()}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one of another user counts: it cannot be signalled)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as someone else's
        return True
    return True


def clean_orphans(target: Path) -> list[Path]:
    """Remove the temporaries of `target` left by killed processes of this host; keep live ones."""
    removed: list[Path] = []
    head = f".{target.name}.tmp-{_HOST}-"
    if not target.parent.is_dir():
        return removed
    for path in target.parent.iterdir():
        if not path.name.startswith(head):
            continue
        pid = path.name[len(head) :].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = temp_file(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def writable_dir(folder: Path) -> bool:
    """Whether new files can be created in `folder` (it exists, or can be made)."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
