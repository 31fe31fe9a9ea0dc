"""Lock files so two processes never train the same run (or write a study's study.json at the same time).

A lock is a file created with O_CREAT|O_EXCL holding {"pid", "host", "started"}, plus, inside a SLURM job,
{"job", "restart"}, and for a lock held with a heartbeat, "heartbeat_s". A lock is stale (and taken over) when
    - its pid is dead on this host;
    - it belongs to an earlier incarnation of this very SLURM job (same job id, lower SLURM_RESTART_COUNT: SLURM
      never runs two incarnations of one job at once, so a requeued job takes over what it held before);
    - it is from another host and has a heartbeat that stopped: the holder touches the file every
      `heartbeat_s` and a file untouched for `STALE_HEARTBEATS` beats lost its process (a job killed on a node).
Any other lock from another host is trusted (we cannot see its pid).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from hopelab.records import read_json

HOST = socket.gethostname()
_EMPTY_GRACE_S = 30.0  # a lock file still empty after this long lost its writer between create and write
HEARTBEAT_S = 60.0  # how often a run's lock is touched while its run trains
STALE_HEARTBEATS = 10  # beats missed before another host's lock is stale (generous: clocks of hosts differ)


def slurm_incarnation() -> tuple[str, int] | None:
    """(job id, restart count) inside a SLURM job, else None. A requeued job keeps its id; the count grows."""
    job = os.environ.get("SLURM_JOB_ID")
    return (job, int(os.environ.get("SLURM_RESTART_COUNT") or 0)) if job else None


class LockHeld(Exception):
    """The lock belongs to another live process."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner
        super().__init__(f"{path} is held by pid {owner.get('pid')} on {owner.get('host')}")

    @property
    def who(self) -> str:
        return f"pid {self.owner.get('pid')} on {self.owner.get('host')}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_owner(path: Path) -> dict | None:
    """The lock's owner, {} for a lock being written, None when there is no lock."""
    try:
        owner = read_json(path)
    except ValueError:  # torn or half-written
        return {}
    if owner is None:
        return None
    return owner if isinstance(owner, dict) else {}


def is_stale(path: Path, owner: dict) -> bool:
    if not owner:  # empty or torn: stale only once its writer had ample time
        try:
            return time.time() - path.stat().st_mtime > _EMPTY_GRACE_S
        except FileNotFoundError:
            return True
    mine = slurm_incarnation()
    if mine is not None and owner.get("job") == mine[0] and int(owner.get("restart", 0)) < mine[1]:
        return True  # held by this job before it was requeued
    if owner.get("host") != HOST:
        beat = owner.get("heartbeat_s")
        if not isinstance(beat, (int, float)):
            return False
        try:
            return time.time() - path.stat().st_mtime > STALE_HEARTBEATS * beat
        except FileNotFoundError:
            return True
    pid = owner.get("pid")
    return not isinstance(pid, int) or not pid_alive(pid)


def held_by_other(path: Path) -> dict | None:
    """The owner of a live lock held by another process, else None."""
    owner = read_owner(Path(path))
    if owner is None or is_stale(Path(path), owner):
        return None
    if owner.get("host") == HOST and owner.get("pid") == os.getpid():
        return None
    return owner


class FileLock:
    """`with FileLock(path):` ... ; `wait=0` raises LockHeld at once, else polls up to `wait` seconds.
    `heartbeat`: seconds between touches of the file while held (a lock held for hours, e.g. a run's), so that
    other hosts can tell a live holder from a dead one; None: no heartbeat (a lock held for a moment)."""

    def __init__(self, path: str | os.PathLike, wait: float = 0.0, poll: float = 0.05,
                 heartbeat: float | None = None):
        self.path = Path(path)
        self.wait, self.poll, self.heartbeat = wait, poll, heartbeat
        self.held = False
        self._stop = threading.Event()

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        owner = {"pid": os.getpid(), "host": HOST, "started": time.time()}
        if (job := slurm_incarnation()) is not None:
            owner["job"], owner["restart"] = job
        if self.heartbeat is not None:
            owner["heartbeat_s"] = self.heartbeat
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:  # gone (released, or broken by someone who judged it stale): nothing to keep alive
                return

    def acquire(self) -> FileLock:
        deadline = time.monotonic() + self.wait
        while True:
            if self._try_create():
                self.held = True
                if self.heartbeat is not None:
                    self._stop.clear()
                    threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True).start()
                return self
            owner = read_owner(self.path)
            if owner is not None and is_stale(self.path, owner):
                self._break_stale(owner)
                continue
            if time.monotonic() >= deadline:
                raise LockHeld(self.path, owner or {})
            time.sleep(self.poll)

    def _break_stale(self, owner: dict) -> None:
        # Move the stale file aside first: of two processes breaking the same stale lock, the second
        # one moves the first one's fresh lock, sees that it is not the stale one, and puts it back.
        grave = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if read_owner(grave) != owner:
            try:
                os.link(grave, self.path)  # atomic; fails if yet another lock appeared meanwhile
            except FileExistsError:
                pass
        grave.unlink(missing_ok=True)

    def release(self) -> None:
        self._stop.set()
        if self.held:
            owner = read_owner(self.path)
            if owner and owner.get("pid") == os.getpid() and owner.get("host") == HOST:
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
