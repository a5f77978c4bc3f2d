"""One writer per run folder: an exclusive ``flock`` on ``<run_dir>/.lock``.

The lock belongs to the open file, not to the file's existence, so the operating system
drops it the moment the holding process exits or is killed: a crashed run never leaves a
stale lock behind, and the ``.lock`` file itself is never deleted (deleting it would let a
second process lock a fresh inode while the first still holds the old one). The holder
writes its pid, host and start time into the file so that a refused process can say who
is in the way.

POSIX only (``fcntl``). On network filesystems ``flock`` is only as reliable as the
server's lock support.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from genlab.errors import RunLockedError

__all__ = ["LOCK_NAME", "RunLock"]

LOCK_NAME = ".lock"


def _holder_description(fd: int) -> str:
    """'process 123 on host (started ...)' from a lock file's contents, as well as they can be read."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8"))
        pid, host, started = info["pid"], info["host"], info["started"]
    except (OSError, ValueError, KeyError, TypeError):
        # The holder may be between taking the lock and writing its details.
        return "another process"
    where = "" if host == socket.gethostname() else f" on {host}"
    return f"process {pid}{where} (started {started})"


class RunLock:
    """Context manager holding an exclusive, non-blocking lock on a run folder.

    Example::

        with RunLock(run_dir):
            train(...)

    Raises:
        RunLockedError: on entry, when another open lock (another live process, or another
            ``RunLock`` in this process) already holds the folder.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        """Prepare a lock for ``run_dir`` (created on acquisition if missing); nothing is locked yet."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``RunLockedError`` naming the holder; returns ``self``."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this RunLock; release it first")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: a subprocess we start must not inherit (and so prolong) the lock. O_NOFOLLOW: a
        # `.lock` planted as a symbolic link must not make us truncate and write the file it points to.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_description(fd)
            os.close(fd)
            raise RunLockedError(
                f"run folder {self.run_dir} is in use by {holder}; wait for it to finish or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases it); a no-op when not held."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # the details of a finished holder would only mislead
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> RunLock:
        """Acquire the lock."""
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the lock."""
        self.release()

    def __del__(self) -> None:
        """Close the file if the object is dropped while held (the OS would too, at exit)."""
        if getattr(self, "_fd", None) is not None:
            self.release()
