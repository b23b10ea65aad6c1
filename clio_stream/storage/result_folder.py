"""A result folder (``result.json`` and its static site in ``site/``): how its site is written, and its one rewrite.

``run_clio`` writes its output folder this way and every published version holds one
(clio_stream.storage.published). ``SiteOptions`` is how a result's site is written (from the settings, or as a
version was published); ``rewrite_result_folder`` edits the result and rebuilds the site next to it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clio_stream.domain.clusters import ClioResult
from clio_stream.domain.metadata import visible_keys
from clio_stream.privacy.visibility import Minimums
from clio_stream.settings import ClioSettings
from clio_stream.site.writer import SiteRecords, SiteViews, write_site
from clio_stream.storage.checkpoint import atomic_write_bytes

if TYPE_CHECKING:
    from clio_stream.storage.published import PublishedVersion

RESULT_FILE = "result.json"
SITE_DIR = "site"


@dataclass(frozen=True)
class SiteOptions:
    """How a result's static site is written."""

    chunk_size: int
    html_root: str
    show_conversations: bool
    minimums: Minimums | None = None
    metadata_keys: tuple[str, ...] = ()  # declared keys a viewer may see (breakdowns in the site)
    chunk_bytes: int = 10_000_000  # the seed's htmlMaxSizePerFile

    @classmethod
    def from_settings(cls, settings: ClioSettings) -> SiteOptions:
        return cls(settings.site_chunk_size, settings.html_root, settings.show_conversations,
                   Minimums.of(settings), tuple(visible_keys(settings.metadata_keys, "viewer")),
                   settings.site_chunk_bytes)

    @classmethod
    def as_published(cls, result: ClioResult, settings: ClioSettings) -> SiteOptions:
        """The options ``result`` was published with (its recorded settings), else ``settings``'.

        A rewrite (deletion) must not change what a version shows, e.g. start showing raw messages.
        """
        recorded, current = result.settings or {}, cls.from_settings(settings)
        return cls(chunk_size=int(recorded.get("site_chunk_size", current.chunk_size)),
                   html_root=str(recorded.get("html_root", current.html_root) or ""),
                   show_conversations=bool(recorded.get("show_conversations", current.show_conversations)),
                   minimums=Minimums.of(settings, recorded), metadata_keys=current.metadata_keys,
                   chunk_bytes=int(recorded.get("site_chunk_bytes", current.chunk_bytes)))

    def write(self, result: ClioResult, site_dir: Path, *, previous: PublishedVersion | None = None,
              version: str = "", shown: SiteRecords | None = None) -> Path:
        """The site of ``result``; ``shown``: the batch run's site-only filter and display of input records."""
        minimums = self.minimums or SiteViews.default(result).minimums
        before = None if previous is None else (previous.version, previous.result, previous.lineage)
        return write_site(result, site_dir, chunk_size=self.chunk_size, html_root=self.html_root,
                          show_conversations=self.show_conversations,
                          views=SiteViews(minimums, self.metadata_keys, before, version),
                          chunk_bytes=self.chunk_bytes, shown=shown)


def rewrite_result_folder(folder: Path, edit: Callable[[ClioResult], bool], settings: ClioSettings) -> bool:
    """Apply ``edit`` to ``folder/result.json``; if it changed something, write it and rebuild ``site/`` next to it.

    For published versions and ``run_clio`` output folders alike; each file goes in by atomic rename.
    """
    try:
        raw = (folder / RESULT_FILE).read_bytes()
    except FileNotFoundError:
        return False
    result = ClioResult.model_validate_json(raw)
    if not edit(result):
        return False
    atomic_write_bytes(folder / RESULT_FILE, result.model_dump_json().encode())
    if (folder / SITE_DIR).exists():
        SiteOptions.as_published(result, settings).write(result, folder / SITE_DIR)
    return True
