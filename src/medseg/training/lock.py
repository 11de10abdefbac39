"""RUN/.lock: one training at a time writes a run folder."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..errors import MedsegError

LOCK = ".lock"


class RunLock:
    """RUN/.lock holding `PID HOST`, created with O_EXCL. A lock whose process is gone (same host) is stale
    and taken over; a live one stops the second training with a MedsegError naming the folder."""

    def __init__(self, folder: Path):
        self.folder, self.path, self.held = folder, folder / LOCK, False
        self.mine = f"{os.getpid()} {socket.gethostname()}\n"

    def acquire(self) -> None:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                owner = self._read() or "an unknown process"
                raise MedsegError(self.folder, f"another training ({owner.strip()}) is writing this run folder "
                                               f"(lock {self.path}); wait for it or use another --out") from None
            with os.fdopen(fd, "w") as f:
                f.write(self.mine)
            self.held = True
            return
        raise MedsegError(self.folder, f"could not take the lock {self.path}")

    def _read(self) -> str:
        try:
            return self.path.read_text()
        except OSError:
            return ""

    def _stale(self) -> bool:
        parts = self._read().split()
        if not parts:  # created but not yet written, or written by a process that died at once
            try:
                return time.time() - self.path.stat().st_mtime > 30
            except FileNotFoundError:
                return True
        if len(parts) > 1 and parts[1] != socket.gethostname():
            return False  # another machine's process: cannot tell, so it counts as alive
        try:
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            return not parts[0].isdigit()
        return False

    def release(self) -> None:
        if self.held and self._read() == self.mine:
            self.path.unlink(missing_ok=True)
        self.held = False
