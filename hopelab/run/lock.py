"""Lock files so two processes never train the same run (or write a study's study.json at the same time).

A lock is a file created with O_CREAT|O_EXCL holding {"pid", "host", "started"}. A lock whose pid is dead
on this host is stale and is taken over; a lock from another host is trusted (we cannot see its pid).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from hopelab.records import read_json

HOST = socket.gethostname()
_EMPTY_GRACE_S = 30.0  # a lock file still empty after this long lost its writer between create and write


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
    if owner.get("host") != HOST:
        return False
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
    """`with FileLock(path):` ... ; `wait=0` raises LockHeld at once, else polls up to `wait` seconds."""

    def __init__(self, path: str | os.PathLike, wait: float = 0.0, poll: float = 0.05):
        self.path = Path(path)
        self.wait, self.poll = wait, poll
        self.held = False

    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": HOST, "started": time.time()}, f)
        return True

    def acquire(self) -> FileLock:
        deadline = time.monotonic() + self.wait
        while True:
            if self._try_create():
                self.held = True
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
        if self.held:
            owner = read_owner(self.path)
            if owner and owner.get("pid") == os.getpid() and owner.get("host") == HOST:
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
