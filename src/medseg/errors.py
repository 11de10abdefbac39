"""One error type for bad input: it names the file and the problem, and the CLI prints it as one line."""

from __future__ import annotations

import os
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


@contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path next to `target`; rename it onto `target` only if the block succeeds.

    Readers therefore never see a half-written file, and a failed step leaves nothing behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes private files; outputs are meant to be shared like any other
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
