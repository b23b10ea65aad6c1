"""Lease locks in the state collection: take, renew, check and release with a token; ``Lease`` renews in the background.

Limits of a lease: expiry compares wall clocks of different hosts (keep them in sync, ``ttl_s`` far above
the skew); a holder that stalls past ``ttl_s`` may overlap with the next one, which is why the clustering
writes are also fenced by their reserved version number (``StateDocuments.put_fenced``); with replication
and a write consistency below ``all`` a failover may lose a lock write; the embedded mode serves one
process only.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from pydantic import ValidationError
from qdrant_client import models

from clio_stream.storage.documents import LockHolder
from clio_stream.storage.errors import StoreError
from clio_stream.storage.qdrant import QdrantConnection, eq, point_id

log = logging.getLogger(__name__)

LOCK_KIND = "lock"


class LockLost(StoreError):
    """A lease ran out or was taken over while its holder still worked: stop before writing anything more."""


def lock_point_id(name: str) -> str:
    """Deterministic id of a lock document."""
    return point_id(LOCK_KIND, name)


class Locks:
    """Named leases, one point each; every change is a conditional write confirmed by reading the token back."""

    def __init__(self, conn: QdrantConnection) -> None:
        self.conn = conn

    def acquire(self, name: str, owner: str, ttl_s: float) -> str | None:
        """Take the lease ``name`` for ``ttl_s`` seconds; its token if taken, None if someone else holds it.

        The token names this holding: renew, check and release with it. The write is a conditional upsert
        (applies only if the lock point is absent or expired) and Qdrant applies a shard's updates one at a
        time, so on a single node two contenders cannot both win; a read-back of the token confirms it.
        """
        now = time.time()
        token = uuid.uuid4().hex
        pid = lock_point_id(name)
        doc = LockHolder(key=name, owner=owner, token=token, acquired_at=now, expires_at=now + float(ttl_s))
        payload = {"kind": LOCK_KIND, **doc.model_dump(exclude_none=True)}
        cond = models.Filter(must=[models.FieldCondition(key="expires_at", range=models.Range(lt=now))])
        with self.conn.guard("lock"):
            self.conn.client.upsert(self.conn.state,
                                    points=[models.PointStruct(id=pid, vector={}, payload=payload)],
                                    update_filter=cond, wait=True)
            found = self.conn.client.retrieve(self.conn.state, [pid], with_payload=True)
        held = bool(found) and (found[0].payload or {}).get("token") == token
        log.debug("lock %s for %s: %s", name, owner, "acquired" if held else "busy")
        return token if held else None

    def renew(self, name: str, token: str, ttl_s: float) -> bool:
        """Extend the lease held with ``token`` by ``ttl_s`` from now; False if that holding is gone.

        Conditional on the token, so a holding that expired and was taken over is never extended.
        """
        pid = lock_point_id(name)
        renewal = uuid.uuid4().hex  # read back to tell whether this renewal applied (floats may not round-trip)
        flt = models.Filter(must=[models.HasIdCondition(has_id=[pid]), eq("token", token)])
        with self.conn.guard("renew lock"):
            self.conn.client.set_payload(self.conn.state, payload={"expires_at": time.time() + float(ttl_s),
                                                                   "renewal": renewal}, points=flt, wait=True)
            found = self.conn.client.retrieve(self.conn.state, [pid], with_payload=True)
        doc = (found[0].payload or {}) if found else {}
        return doc.get("token") == token and doc.get("renewal") == renewal

    def check(self, name: str, token: str) -> None:
        """Raise :class:`LockLost` unless the lease ``name`` is still held, unexpired, with ``token``."""
        holder = self.holder(name)
        if holder is None or holder.token != token:
            raise LockLost(f"lock {name!r} is no longer held with this token "
                           f"(holder: {None if holder is None else holder.owner})")

    def release(self, name: str, token: str) -> bool:
        """Drop the lease if still held with ``token`` (conditional delete); True if it was."""
        pid = lock_point_id(name)
        with self.conn.guard("unlock"):
            found = self.conn.client.retrieve(self.conn.state, [pid], with_payload=True)
            mine = bool(found) and (found[0].payload or {}).get("token") == token
            flt = models.Filter(must=[models.HasIdCondition(has_id=[pid]), eq("token", token)])
            self.conn.client.delete(self.conn.state, points_selector=models.FilterSelector(filter=flt), wait=True)
        return mine

    def lease(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        """Take the lock ``name`` and keep renewing it in the background; None if someone else holds it.

        With renewal, ``ttl_s`` does not have to outlast the longest job: it only bounds how long a holder
        that died (SIGKILL, lost host) blocks the next one. Release it with ``Lease.release()`` (or ``with``).
        """
        token = self.acquire(name, owner, ttl_s)
        if token is None:
            return None
        return Lease(self, name, owner, token, ttl_s).start()

    def holder(self, name: str) -> LockHolder | None:
        """The current lease (owner, token, expires_at) if unexpired, else None."""
        with self.conn.guard("lock holder"):
            found = self.conn.client.retrieve(self.conn.state, [lock_point_id(name)], with_payload=True)
        if not found:
            return None
        try:
            doc = LockHolder.model_validate(found[0].payload or {})
        except ValidationError as exc:
            raise StoreError(f"lock {name!r}: its document is not a lease ({exc.error_count()} errors)") from exc
        return doc if doc.expires_at > time.time() else None

    def owner(self, name: str) -> str | None:
        """Who holds the lease ``name`` now (None when nobody does): for logs and messages."""
        holder = self.holder(name)
        return None if holder is None else holder.owner


class Lease:
    """A held lock, renewed every third of its TTL by a daemon thread until ``release``.

    If a renewal finds the holding gone (it expired while Qdrant was unreachable, or the clocks disagree),
    the lease is marked lost and ``check()`` raises :class:`LockLost`, so the holder stops before its next
    write instead of racing the new holder. ``check()`` also asks the store, so it holds at the moment of
    the write, not only at the last renewal. A renewal that fails because Qdrant is down is retried until
    the lease would have expired.
    """

    def __init__(self, locks: Locks, name: str, owner: str, token: str, ttl_s: float) -> None:
        self.locks, self.name, self.owner, self.token, self.ttl_s = locks, name, owner, token, float(ttl_s)
        self.expires_at = time.time() + self.ttl_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{name}", daemon=True)

    def start(self) -> Lease:
        self._thread.start()
        return self

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3.0):
            try:
                renewed = self.locks.renew(self.name, self.token, self.ttl_s)
            except StoreError as exc:
                if time.time() >= self.expires_at:
                    self.lost = f"not renewed before it expired ({exc})"
                    log.error("lock %s of %s lost: %s", self.name, self.owner, self.lost)
                    return
                log.warning("renewing lock %s failed (%s); retrying", self.name, exc)
                continue
            if not renewed:
                self.lost = f"taken over by {self.locks.owner(self.name)}"
                log.error("lock %s of %s lost: %s", self.name, self.owner, self.lost)
                return
            self.expires_at = time.time() + self.ttl_s

    def check(self) -> None:
        """Raise :class:`LockLost` unless the lease is still ours (call before each write)."""
        if self.lost is not None:
            raise LockLost(f"lock {self.name!r} of {self.owner}: {self.lost}")
        if time.time() >= self.expires_at:
            raise LockLost(f"lock {self.name!r} of {self.owner}: expired (renewals failed)")
        self.locks.check(self.name, self.token)

    def release(self) -> bool:
        """Stop renewing and drop the lock if still ours; True if it was."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self.lost is not None:
            return False
        return self.locks.release(self.name, self.token)
