"""One run per output: a lease object ``DST/_lease.json`` (owner, expiry) that a run holds and
renews while it lives.

A second run on the same DST finds a live lease and refuses (or, asked to wait, polls until the
lease is released or expires). A run killed without a goodbye stops renewing; once its lease
expires the next run takes it over (at once when the holder ran on this machine and its process
is gone: a killed run is then resumed without waiting out the TTL).

Every change to the lease is conditional on the version last read (samflow/store/lease_file.py:
``If-None-Match`` / ``If-Match`` on S3, ``O_EXCL`` and a folder lock locally), so of two runs
taking it at once exactly one wins. A run whose lease was taken over (its renewals failed for
longer than the TTL) learns it at its next renewal or ``check()``, and stops before its next
commit with :class:`LeaseLost`.
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
from samflow.store.lease_file import Token, lease_file
from samflow.store.storage import filesystem

LEASE_FILE = "_lease.json"
log = logging.getLogger(__name__)


class LeaseHeld(UserError):
    """Another live run holds the output's lease."""


class LeaseLost(UserError):
    """Another run took the output's lease over while this run held it."""


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
    while held, a background thread renews it every ``ttl_s / 3`` seconds. Call ``check()``
    before each commit: it raises :class:`LeaseLost` once another run holds the lease."""

    def __init__(self, dst: str, storage: StorageConfig, *, ttl_s: float = 60.0,
                 owner: str | None = None) -> None:
        self.dst = dst
        fs, root = filesystem(dst, storage)
        self.file = lease_file(fs, root.rstrip("/") + "/" + LEASE_FILE)
        self.ttl_s = ttl_s
        self.owner = owner or new_owner()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lock = threading.Lock()  # the renewer and check() both move the token on
        self._token: Token | None = None
        self._acquired_at = 0.0
        self._taken_by: str | None = None
        self.lost = threading.Event()  # set once another run holds the lease this run held

    def read(self) -> LeaseInfo | None:
        found = self.file.read()
        return None if found is None else _parse(found[0])

    def try_acquire(self) -> LeaseInfo | None:
        """Take the lease if it is free or expired; None when taken, else the live holder."""
        current: LeaseInfo | None = None
        for _ in range(5):  # each pass fails only because another run changed the lease meanwhile
            now = time.time()
            data = self._payload(now)
            token = self.file.create(data)
            if token is None:
                found = self.file.read()
                if found is None:
                    continue  # released between our create and read: create again
                current = _parse(found[0])
                if current is not None and current.owner == self.owner:
                    self._held(found[1], current.acquired_at)  # our own write (a retried request)
                    return None
                if current is not None and current.live and not owner_gone(current.owner):
                    return current
                token = self.file.replace(data, found[1])  # take over an expired or orphaned lease
            if token is not None:
                self._held(token, now)
                return None
        return current or LeaseInfo("another run", now + self.ttl_s, now)

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
        self.lost.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="samflow-lease", daemon=True)
        self._renewer.start()

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this run still holds the lease (before each commit)."""
        with self._lock:
            if not self.lost.is_set():
                found = self.file.read()
                if found is None or found[1] != self._token:
                    self._lose(found)
                elif (current := _parse(found[0])) is None or not current.live:
                    self._renew_locked()  # its renewals are late: renew now, or learn it is gone
        if self.lost.is_set():
            raise LeaseLost(self._lost_message())

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        with self._lock:
            if self._token is not None and not self.lost.is_set():
                self.file.delete(self._token)  # only our version: never another run's lease
            self._token = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _held(self, token: Token, acquired_at: float) -> None:
        self._token, self._acquired_at, self._taken_by = token, acquired_at, None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3) and not self.lost.is_set():
            try:
                with self._lock:
                    self._renew_locked()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried next tick
                log.warning("could not renew the lease on %s: %s", self.dst, exc)

    def _renew_locked(self) -> None:
        if self.lost.is_set() or self._token is None:
            return
        data = self._payload(self._acquired_at)
        token = self.file.replace(data, self._token)
        if token is not None:
            self._token = token
            return
        found = self.file.read()
        if found is not None and found[0] == data:
            self._token = found[1]  # our write landed; only its answer was lost (a retried request)
        else:
            self._lose(found)

    def _lose(self, found: tuple[bytes, Token] | None) -> None:
        holder = _parse(found[0]) if found is not None else None
        self._taken_by = holder.owner if holder is not None else None
        log.error("%s", self._lost_message())
        self.lost.set()

    def _payload(self, acquired_at: float) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl_s,
                           "acquired_at": acquired_at, "ttl_s": self.ttl_s}).encode()

    def _lost_message(self) -> str:
        now = f"{self._taken_by} holds it now" if self._taken_by else "it was removed"
        return (f"this run lost the lease on output {self.dst} ({now}; its renewals failed for longer "
                f"than output.lease_ttl_s={self.ttl_s:g} s); it stopped before its next commit, keeping "
                "what it had committed: run again once the other run is done")

    def _held_message(self, holder: LeaseInfo) -> str:
        remaining = max(0.0, holder.expires_at - time.time())
        return (f"output {self.dst} is in use by another run ({holder.owner}, lease renewed until "
                f"{remaining:.0f} s from now); wait for it (--wait) or choose another --out")


def _parse(data: bytes) -> LeaseInfo | None:
    """The lease's content; None when unreadable (nobody can be said to hold it)."""
    try:
        found = json.loads(data)
        return LeaseInfo(str(found["owner"]), float(found["expires_at"]), float(found.get("acquired_at", 0)))
    except (ValueError, KeyError, TypeError):
        return None
