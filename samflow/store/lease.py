"""One run per output: a lease object ``DST/_lease.json`` (owner, expiry) that a run holds and
renews while it lives.

A second run on the same DST finds a live lease and refuses (or, asked to wait, polls until the
lease is released or expires). A run killed without a goodbye stops renewing; once its lease
expires the next run takes it over (at once when the holder ran on this machine and its process
is gone: a killed run is then resumed without waiting out the TTL). Object stores offer no compare-and-swap that works everywhere,
so taking a lease is write-then-read-back: after writing, a run waits ``settle_s`` and reads the
lease again; only if it still names this run is it held (of two runs writing at once, the last
write wins and the other sees it and backs off).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass

from samflow.config import StorageConfig
from samflow.errors import UserError
from samflow.store.storage import filesystem, put_whole

LEASE_FILE = "_lease.json"
log = logging.getLogger(__name__)


class LeaseHeld(UserError):
    """Another live run holds the output's lease."""


@dataclass(frozen=True)
class LeaseInfo:
    owner: str
    expires_at: float
    acquired_at: float

    @property
    def live(self) -> bool:
        return self.expires_at > time.time()


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_gone(owner: str) -> bool:
    """Whether the owner was a process on this machine that no longer exists."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's run: only its lease's expiry tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class Lease:
    """The lease on one DST. ``acquire()`` then ``release()``, or use it as a context manager;
    while held, a background thread renews it every ``ttl_s / 3`` seconds."""

    def __init__(self, dst: str, storage: StorageConfig, *, ttl_s: float = 60.0,
                 owner: str | None = None, settle_s: float = 0.5) -> None:
        self.dst = dst
        self.fs, root = filesystem(dst, storage)
        self.path = root.rstrip("/") + "/" + LEASE_FILE
        self.ttl_s = ttl_s
        self.owner = owner or new_owner()
        self.settle_s = settle_s
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = threading.Event()  # set if another run took the lease over while we held it

    def read(self) -> LeaseInfo | None:
        try:
            data = json.loads(self.fs.cat_file(self.path))
            return LeaseInfo(str(data["owner"]), float(data["expires_at"]), float(data.get("acquired_at", 0)))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: nobody can be said to hold it

    def try_acquire(self) -> LeaseInfo | None:
        """Take the lease if it is free or expired; None when taken, else the live holder."""
        current = self.read()
        if current is not None and current.live and current.owner != self.owner and not owner_gone(current.owner):
            return current
        self._write(acquired_at=time.time())
        time.sleep(self.settle_s)
        after = self.read()
        if after is None or after.owner != self.owner:
            return after or current  # someone wrote after us: theirs
        return None

    def acquire(self, *, wait: bool = False, poll_s: float = 2.0, timeout_s: float | None = None) -> None:
        """Hold the lease, or raise LeaseHeld (at once, or after ``timeout_s`` when waiting)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        told = False
        while True:
            holder = self.try_acquire()
            if holder is None:
                break
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                raise LeaseHeld(self._held_message(holder))
            if not told:  # once: the holder may hold it for hours
                log.warning("waiting: %s", self._held_message(holder))
                told = True
            time.sleep(poll_s)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="samflow-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        current = self.read()
        if current is not None and current.owner == self.owner:
            self.fs.rm(self.path)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                current = self.read()
                if current is not None and current.owner != self.owner:
                    log.error("lease on %s was taken over by %s; this run no longer holds it", self.dst, current.owner)
                    self.lost.set()
                    return
                self._write(acquired_at=current.acquired_at if current else time.time())
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried next tick
                log.warning("could not renew the lease on %s: %s", self.dst, exc)

    def _write(self, acquired_at: float) -> None:
        payload = {"owner": self.owner, "expires_at": time.time() + self.ttl_s, "acquired_at": acquired_at,
                   "ttl_s": self.ttl_s}
        put_whole(self.fs, self.path, json.dumps(payload).encode())

    def _held_message(self, holder: LeaseInfo) -> str:
        remaining = max(0.0, holder.expires_at - time.time())
        return (f"output {self.dst} is in use by another run ({holder.owner}, lease renewed until "
                f"{remaining:.0f} s from now); wait for it (--wait) or choose another --out")
