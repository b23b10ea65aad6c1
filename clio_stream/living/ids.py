"""Stable cluster ids for living clusters: a per-facet counter (``storage.documents.id_counter_key``), so a
number never names two clusters."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

@dataclass
class IdAllocator:
    """Fresh node ids ``<prefix>-l<level>-<n>``: numbers only grow, so an id never names two clusters."""

    prefix: str
    next_by_level: dict[int, int] = field(default_factory=dict)

    @classmethod
    def restore(cls, prefix: str, doc: Mapping[str, Any] | None, existing: Iterable[str] = ()) -> IdAllocator:
        """From the stored counter, raised past every id in ``existing`` (ids published before counters existed)."""
        nxt = {int(k): int(v) for k, v in dict((doc or {}).get("next") or {}).items()}
        pattern = re.compile(rf"^{re.escape(prefix)}-l(\d+)-(\d+)$")
        for nid in existing:
            m = pattern.match(str(nid))
            if m:
                level, n = int(m.group(1)), int(m.group(2))
                nxt[level] = max(nxt.get(level, 0), n + 1)
        return cls(prefix, nxt)

    def new(self, level: int) -> str:
        n = self.next_by_level.get(level, 0)
        self.next_by_level[level] = n + 1
        return f"{self.prefix}-l{level}-{n}"

    def state(self) -> dict[str, Any]:
        return {"next": {str(k): v for k, v in sorted(self.next_by_level.items())}}
