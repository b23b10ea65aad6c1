"""Distinct users of large clusters in bounded memory: one HyperLogLog register row per cluster.

Distinct users do not add up over pages, shards or children the way counts do, and an exact set per cluster
grows with the store. The registers merge by maximum instead, so a parent's sketch is its leaves' and a resumed
shard's is its pages'; the estimate's relative error is about 1.04 / sqrt(2**P), 3 %. Clusters it puts at no
more than ``EXACT_USERS`` users (or four times the privacy minimum, if more) are counted exactly by Qdrant
(``living.population``), so a privacy minimum is always checked against an exact number.

Written here rather than taken from a sketch library because the pass updates whole pages at once:
one vectorised ``np.maximum.at`` per page instead of a call per point and a serialised sketch per cluster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

P = 10  # register index bits: 1024 registers (1 KiB) per cluster
M = 1 << P
EXACT_USERS = 100  # clusters estimated at no more users (nor 4x the minimum) are counted exactly by Qdrant


def user_keys(users: Sequence[str]) -> np.ndarray:
    """64-bit keys of user hashes: their first 16 hex digits (they are keyed HMACs), else a BLAKE2b of them."""
    out = np.empty(len(users), np.uint64)
    for i, u in enumerate(users):
        try:
            if len(u) < 16:
                raise ValueError(u)
            out[i] = int(u[:16], 16)
        except ValueError:
            out[i] = int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little")
    return out


def add_users(registers: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> None:
    """Add users ``keys`` (uint64) to the register rows of their clusters ``labels``, in place."""
    if not len(keys):
        return
    index = (keys >> np.uint64(64 - P)).astype(np.int64)
    rest = ((keys << np.uint64(P)) >> np.uint64(32)).astype(np.float64)  # the next 32 bits, exact as a float
    bits = np.frexp(rest)[1]  # bit length (0 for 0)
    rank = np.where(rest > 0, 33 - bits, 33).astype(np.uint8)  # leading zeros + 1
    np.maximum.at(registers, (labels, index), rank)


def estimate(registers: np.ndarray) -> float:
    """Distinct users of the merged rows ``registers`` ((rows, M) or (M,)): HyperLogLog with linear counting
    for small numbers."""
    merged = registers.max(axis=0) if registers.ndim == 2 else registers
    alpha = 0.7213 / (1.0 + 1.079 / M)
    raw = alpha * M * M / float(np.sum(np.exp2(-merged.astype(np.float64))))
    zeros = int(np.count_nonzero(merged == 0))
    if raw <= 2.5 * M and zeros:
        return M * float(np.log(M / zeros))
    return raw
