"""The writer lock: one writing job per work dir, as a lease in a lock file.

``personas run``, ``ingest``, ``label``, ``propagate``, ``forget`` and ``evaluate`` hold it
for their whole run, so two jobs never race on the same Delta tables or on the creation of
the MLflow sqlite store. The lease is the file ``<workdir>/personas.lock``, a JSON record of
its owner (a random token, the host, the pid, the command), when it was taken and when it was
last renewed. It is created with an exclusive create (``O_CREAT | O_EXCL``), which succeeds
for exactly one process on a local or POSIX file system. On Databricks the work dir is a
Unity Catalog volume (conf/databricks.yaml), shared by every job of the workspace; the
scheduler there already runs one task of the job at a time, and this lock is a second line
of defence whose exclusive create on the volume's FUSE mount has not been tested here
(README "Guarantees" says so).

The holder renews the lease every ``lock.heartbeat_s`` seconds from a daemon thread. A lease
is stale, and the next job takes it over, when it was not renewed for ``lock.lease_s``
seconds (a job killed on another host), or at once when its holder ran on this host and its
pid is gone (a job killed here). Taking over is itself guarded by an exclusive "breaker"
file, so two jobs that find the same stale lease cannot both take it.

A second job either fails at once with exit code 5 (``LockHeldError``) naming the holder, or,
given ``--wait``, polls every ``lock.poll_s`` seconds until the lease is free.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

from persona_lib.config import AppConfig
from persona_lib.errors import LockHeldError

log = logging.getLogger("personas.lock")

LOCK_FILE = "personas.lock"
# A breaker file older than this belongs to a job killed while taking over a stale lease.
BREAKER_STALE_S = 60.0


def lock_path(config: AppConfig) -> Path:
    return config.workdir_path / LOCK_FILE


def read_lease(path: Path) -> Optional[dict]:
    """The lease in the lock file, or None when there is no (readable) lease."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        # A lease being written right now (or a truncated one): treat it as held and fresh.
        return {"owner": "?", "host": "?", "pid": -1, "command": "?", "heartbeat_at": time.time()}


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(lease: dict, lease_s: float, now: Optional[float] = None) -> bool:
    now = time.time() if now is None else now
    if now - float(lease.get("heartbeat_at", 0)) > lease_s:
        return True
    return lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", -1)))


def describe(lease: dict) -> str:
    age = time.time() - float(lease.get("heartbeat_at", time.time()))
    return (f"`personas {lease.get('command')}` (pid {lease.get('pid')} on {lease.get('host')}, "
            f"lease renewed {age:.0f} s ago)")


class WriterLock:
    """The lease of one job; ``acquire`` then ``release`` (or use ``writer_lock``)."""

    def __init__(self, config: AppConfig, command: str) -> None:
        self.path = lock_path(config)
        self.settings = config.lock
        self.record = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "command": command, "acquired_at": time.time(), "heartbeat_at": time.time()}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ taking the lease
    def try_acquire(self) -> Optional[dict]:
        """Take the lease; returns None on success, or the holder's lease."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create_exclusive():
                return None
            holder = read_lease(self.path)
            if holder is None:
                continue  # released between our create and our read: try again
            if not is_stale(holder, self.settings.lease_s):
                return holder
            self._break_stale(holder)
        return read_lease(self.path) or {"command": "?", "pid": "?", "host": "?"}

    def acquire(self, wait: bool) -> None:
        while True:
            holder = self.try_acquire()
            if holder is None:
                break
            if not wait:
                raise LockHeldError(
                    f"another job writes this work dir: {describe(holder)}; lock file {self.path}. "
                    "Run again when it has finished, or pass --wait to wait for it.")
            log.info("waiting for the writer lock held by %s", describe(holder))
            time.sleep(self.settings.poll_s)
        log.info("writer lock taken (%s)", self.path)
        self._thread = threading.Thread(target=self._heartbeat, name="personas-lock-heartbeat", daemon=True)
        self._thread.start()

    def _create_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(self.record, handle)
        return True

    def _break_stale(self, stale: dict) -> None:
        """Remove a stale lease, unless another job is already doing so or renewed it."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - breaker.stat().st_mtime > BREAKER_STALE_S:
                    breaker.unlink()
            return
        try:
            os.close(fd)
            current = read_lease(self.path)
            # Only the lease we judged stale goes: a fresh holder that got in meanwhile stays.
            if current is not None and current.get("owner") == stale.get("owner"):
                log.warning("taking over the stale writer lock of %s", describe(stale))
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
        finally:
            with contextlib.suppress(FileNotFoundError):
                breaker.unlink()

    # ------------------------------------------------------------------ holding it
    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            current = read_lease(self.path)
            if current is None or current.get("owner") != self.record["owner"]:
                log.error("the writer lock %s was taken over by another job: this job's lease had expired "
                          "(lock.lease_s %.0f s); the other job may now write concurrently",
                          self.path, self.settings.lease_s)
                return
            self.record["heartbeat_at"] = time.time()
            temporary = self.path.with_name(f"{self.path.name}.{self.record['owner']}")
            temporary.write_text(json.dumps(self.record))
            os.replace(temporary, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current = read_lease(self.path)
        if current is not None and current.get("owner") == self.record["owner"]:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@contextlib.contextmanager
def writer_lock(config: AppConfig, command: str, wait: bool = False) -> Iterator[WriterLock]:
    """Hold the work dir's writer lock for the block (exit code 5 if it is held, unless ``wait``)."""
    lock = WriterLock(config, command)
    lock.acquire(wait)
    try:
        yield lock
    finally:
        lock.release()
