"""One error type for bad input: it names the file and the problem, and the CLI prints it as one line.

Also the rules every writer follows: `check_output` (an output path is checked before any work starts),
`atomic_path` (temp file, then rename), `writing` (a full disk ends in one line naming the output) and
`fault` (a test hook that kills the process between writing a temp file and renaming it).
"""

from __future__ import annotations

import errno
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path


class MedsegError(Exception):
    """Bad input or a bad request: shown to the user as `error: <path>: <problem>`, exit code 2."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}" if self.path else self.problem


class WriteFailed(MedsegError):
    """An output could not be written (full disk, read-only file system); an enclosing `writing` names its own
    path instead (a checkpoint folder rather than a file inside its temporary copy)."""


# errno -> what the user reads; only errors that writing can cause and the user can fix
WRITE_PROBLEMS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system"}


@contextmanager
def writing(path: str | os.PathLike, note: str = ""):
    """Run a block that writes the output `path`: a full disk (or quota, or read-only file system) becomes one
    WriteFailed naming `path`, plus `note` (what was kept). Other errors pass unchanged."""
    try:
        yield
    except WriteFailed as e:
        raise WriteFailed(path, e.problem.split("; ")[0] + (f"; {note}" if note else "")) from e
    except OSError as e:
        if e.errno not in WRITE_PROBLEMS:
            raise
        raise WriteFailed(path, WRITE_PROBLEMS[e.errno] + (f"; {note}" if note else "")) from e


def check_output(path: str | os.PathLike, kind: str = "folder") -> Path:
    """Stop before any work when `path` cannot become the output `kind` ("folder" or "file"): it exists as the
    other kind, it or its nearest existing parent folder is not writable, or a parent is a file."""
    path = Path(path)
    if path.exists():
        if kind == "folder" and not path.is_dir():
            raise MedsegError(path, "exists and is a file, not a folder: give a folder for the output")
        if kind == "file" and path.is_dir():
            raise MedsegError(path, "exists and is a folder, not a file: give a file name for the output")
        folder = path if kind == "folder" else path.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise MedsegError(path, f"cannot write here: {_unwritable(folder)}")
        return path
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MedsegError(path, f"cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MedsegError(path, f"cannot be created: {_unwritable(parent)}")
    return path


def _unwritable(folder: Path) -> str:
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return f"{folder} is on a read-only file system" if read_only else f"folder {folder} is not writable (permissions)"


_fault_hits: dict[str, int] = {}


def fault(point: str) -> None:
    """Test hook for crash safety, a no-op unless the environment sets MEDSEG_FAULT=<point>[@n]: then the n-th time
    (default: the first) this process reaches `point` it kills itself with SIGKILL (no clean-up runs), so a test
    can stop a write at an exact place. Points sit between writing a temporary copy and renaming it into place:
    "atomic:<file name>" (atomic_path), "checkpoint:<folder name>:written" (a checkpoint's temporary folder
    complete, nothing renamed yet) and "checkpoint:<folder name>:swap" (the old folder renamed aside, the new
    one not yet in place; training.state)."""
    want = os.environ.get("MEDSEG_FAULT")
    if not want:
        return
    name, _, nth = want.partition("@")
    if name != point:
        return
    _fault_hits[point] = _fault_hits.get(point, 0) + 1
    if _fault_hits[point] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path next to `target`; rename it onto `target` only if the block succeeds.

    Readers therefore never see a half-written file, and a failed step leaves nothing behind; a full disk
    ends in one WriteFailed naming `target`.
    """
    target = Path(target)
    with writing(target, "nothing was replaced"):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.chmod(tmp, 0o644)  # mkstemp makes private files; outputs are meant to be shared like any other
        try:
            yield Path(tmp)
            fault(f"atomic:{target.name}")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
