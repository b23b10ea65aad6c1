"""Write a ``ClioResult`` as a static, offline, lazily loaded website.

The page (``static/index.html``) is one self-contained file; the data lives in
gzip-compressed JSON chunks under ``data/`` so a browser only downloads the part
of a tree the user opens, and a result with millions of conversations does not
become one huge file. Layout (paths relative to ``data/``)::

    version.json                      plain JSON {format, version, generated_at}: cheap polling
    manifest.json.gz                  facets, their root nodes, counts, version
    f<i>/children/<ref>.json.gz       the visible children of one node (+ other_count)
    f<i>/members/<ref>-<page>.json.gz one page (<= chunk_size) of a leaf's conversations
    conversations/index.json.gz       [{file, first, last, count}] sorted id ranges
    conversations/<n>.json.gz         <= chunk_size conversation records

Privacy: hidden nodes (and anything below them) are never written, and neither
is any conversation that sits in a hidden node of any facet, so a withheld
cluster cannot be reconstructed from member lists or facet values elsewhere.
Their parents only get an aggregate ``other_count``, and a parent's users, numeric statistics
and trend are aggregated over its visible children only, so subtracting the visible children
from a parent gives nothing away. All of it is ``privacy.visibility``'s rule, applied here.

The site is built in a temporary sibling directory and swapped in with one
rename, so a reader never sees a half-written site.
"""

from __future__ import annotations

import ctypes
import gzip
import html
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from clio_stream.privacy.visibility import FacetVisibility, Minimums, result_visibility
from clio_stream.site.views_data import write_views
from clio_stream.domain.clusters import ClioResult, ClusterNode
from clio_stream.domain.conversation import Conversation

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DATA_DIR = "data"
MANIFEST_FILE = "manifest.json.gz"
VERSION_FILE = "version.json"
CONVERSATION_INDEX_FILE = "conversations/index.json.gz"
LABEL_MAX_CHARS = 240
TEMPLATE_TITLE = "{{CLIO_TITLE}}"
TEMPLATE_CONFIG = "{{CLIO_CONFIG}}"
TEMPLATE_VIEWS_CSS = "{{CLIO_VIEWS_CSS}}"  # static/views.css and views.js: the map, breakdowns, filters, search
TEMPLATE_VIEWS_JS = "{{CLIO_VIEWS_JS}}"


@dataclass(frozen=True)
class SiteViews:
    """What the site's views need beyond the result: the minimums, the viewers' metadata keys, the version before."""

    minimums: Minimums
    metadata_keys: tuple[str, ...] = ()
    previous: tuple[str, ClioResult, dict[str, str]] | None = None  # (its version, its result, lineage)
    version: str = ""

    @classmethod
    def default(cls, result: ClioResult) -> SiteViews:
        """The minimums the result was made with (the settings' defaults when it does not say)."""
        from clio_stream.settings import ClioSettings

        return cls(Minimums.of(ClioSettings.model_construct(), result.settings))


def write_site(
    result: ClioResult,
    out_dir: Path,
    *,
    chunk_size: int,
    html_root: str = "",
    show_conversations: bool = True,
    title: str = "clio-stream",
    views: SiteViews | None = None,
) -> Path:
    """Write the site for ``result`` into ``out_dir`` atomically and return ``out_dir``.

    ``html_root`` is the URL path the site is served under ("" = wherever
    index.html is); ``show_conversations=False`` writes facet values only, never
    message contents.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dir = Path(out_dir).absolute()
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}")
    started = time.monotonic()
    try:
        tmp.mkdir()
        builder = _SiteBuilder(result, tmp, chunk_size=chunk_size, html_root=normalize_html_root(html_root),
                               show_conversations=show_conversations, title=title,
                               views=views or SiteViews.default(result))
        builder.build()
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote site %s (version %s, %d files, %d conversations shown, %d withheld) in %.2fs",
             out_dir, builder.version, builder.files_written, builder.shown_conversations,
             len(builder.withheld_conversations), time.monotonic() - started)
    return out_dir


def normalize_html_root(html_root: str) -> str:
    """'' or a path without trailing slash ('/clio'); full URLs are kept as given."""
    root = (html_root or "").strip().rstrip("/")
    if root and "://" not in root and not root.startswith("/"):
        root = "/" + root
    return root


def read_gz_json(path: Path) -> Any:
    """Read one data chunk (handy for tests, the API and debugging)."""
    return json.loads(gzip.decompress(Path(path).read_bytes()).decode("utf-8"))


def _utf16_key(text: str) -> bytes:
    """Sort key matching JavaScript's string order (UTF-16 code units), for binary search in the browser."""
    return text.encode("utf-16-be", "surrogatepass")


class _SiteBuilder:
    """Holds the state of one site build; one instance per ``write_site`` call."""

    def __init__(self, result: ClioResult, root: Path, *, chunk_size: int, html_root: str,
                 show_conversations: bool, title: str, views: SiteViews) -> None:
        self.result = result
        self.views = views
        self.root = root
        self.data = root / DATA_DIR
        self.chunk_size = chunk_size
        self.html_root = html_root
        self.show_conversations = show_conversations
        self.title = title
        self.version = f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:6]}"
        self.generated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.files_written = 0
        self.shown_conversations = 0
        self.values = {cf.conversation_id: cf.values for cf in result.facet_values}
        self.visibility = result_visibility(result)
        self.withheld_conversations = set(self.visibility.withheld)
        # conversation id -> facet name -> {"path": node ids root..leaf, "name": leaf name} (visible nodes only)
        self.paths: dict[str, dict[str, dict[str, Any]]] = {}
        self.refs: dict[int, int] = {}  # facet index -> last node ref handed out (names the node's files)

    # --- output ---

    def _write_json_gz(self, rel: str, payload: dict[str, Any]) -> None:
        path = self.data / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"version": self.version, **payload}, ensure_ascii=False, separators=(",", ":"))
        # mtime=0 keeps identical content byte-identical across builds.
        path.write_bytes(gzip.compress(body.encode("utf-8"), compresslevel=6, mtime=0))
        self.files_written += 1

    def build(self) -> None:
        self.data.mkdir(parents=True)
        facets_out = []
        for index, facet in enumerate(self.result.facets):
            facets_out.append(self._facet_entry(index, facet))
        conversation_chunks = self._write_conversations()
        numeric = [{"name": f["name"], "min": f["numeric"][0], "max": f["numeric"][1]}
                   for f in self.result.facets if f.get("numeric")]
        manifest = {
            "format": FORMAT_VERSION,
            "generated_at": self.generated_at,
            "title": self.title,
            "show_conversations": self.show_conversations,
            "chunk_size": self.chunk_size,
            "total_conversations": len(self.result.conversations),
            "shown_conversations": self.shown_conversations,
            "withheld_conversations": len(self.withheld_conversations),
            "conversation_chunks": conversation_chunks,
            "conversation_index": CONVERSATION_INDEX_FILE,
            "numeric_facets": numeric,
            "facets": facets_out,
            "views": write_views(self._write_json_gz, self.result, self.visibility, minimums=self.views.minimums,
                                 metadata_keys=self.views.metadata_keys, previous=self.views.previous,
                                 version=self.views.version),
        }
        self._write_json_gz(MANIFEST_FILE, manifest)
        (self.data / VERSION_FILE).write_text(json.dumps(
            {"format": FORMAT_VERSION, "version": self.version, "generated_at": self.generated_at}))
        self.files_written += 1
        self._write_index_html()

    def _write_index_html(self) -> None:
        template = resources.files("clio_stream.site").joinpath("static/index.html").read_text(encoding="utf-8")
        config = {"htmlRoot": self.html_root, "title": self.title, "format": FORMAT_VERSION}
        # "<" escaped so no data can close the <script> element it sits in.
        config_json = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        static = resources.files("clio_stream.site").joinpath("static")
        page = (template.replace(TEMPLATE_TITLE, html.escape(self.title)).replace(TEMPLATE_CONFIG, config_json)
                .replace(TEMPLATE_VIEWS_CSS, static.joinpath("views.css").read_text(encoding="utf-8"))
                .replace(TEMPLATE_VIEWS_JS, static.joinpath("views.js").read_text(encoding="utf-8")))
        (self.root / "index.html").write_text(page, encoding="utf-8")
        self.files_written += 1

    # --- facets and trees ---

    def _facet_entry(self, index: int, facet: dict[str, Any]) -> dict[str, Any]:
        name = facet["name"]
        hierarchy = self.result.hierarchies.get(name)
        entry: dict[str, Any] = {
            "name": name,
            "index": index,
            "question": facet.get("question", ""),
            "numeric": list(facet["numeric"]) if facet.get("numeric") else None,
            "has_hierarchy": hierarchy is not None,
        }
        if hierarchy is None:
            return entry
        shown = self.visibility.facets[name]
        entry.update({
            "total": shown.total,
            "depth": hierarchy.depth(),
            "other_count": shown.other_count,
            "roots": self._write_subtree(index, shown, [hierarchy.nodes[r] for r in shown.visible_roots], []),
        })
        return entry

    def _write_subtree(self, facet_index: int, shown: FacetVisibility, nodes: list[ClusterNode],
                       path: list[str]) -> list[dict[str, Any]]:
        """Write the files below ``nodes`` (visible siblings) and return their summaries.

        Iterative over levels would save stack, but hierarchies are a handful of
        levels deep, so plain recursion stays readable.
        """
        entries = []
        for node in nodes:
            ref = self._next_ref(facet_index)
            visible = shown.visible_children(node)
            other_count = shown.withheld_count(node)
            entry = shown.public[node.id].public_fields()
            entry.update({"ref": ref, "n_children": len(visible), "other_count": other_count,
                          "children_file": None, "member_files": [], "n_members": 0, "withheld_members": 0})
            node_path = path + [node.id]
            if shown.children(node):
                rel = f"f{facet_index}/children/{ref}.json.gz"
                child_entries = self._write_subtree(facet_index, shown, visible, node_path)
                self._write_json_gz(rel, {"facet": shown.hierarchy.facet, "parent_id": node.id,
                                          "children": child_entries, "other_count": other_count})
                entry["children_file"] = rel
            else:
                self._write_members(facet_index, shown.hierarchy.facet, node, ref, entry, node_path)
            entries.append(entry)
        return entries

    def _next_ref(self, facet_index: int) -> int:
        self.refs[facet_index] = self.refs.get(facet_index, -1) + 1
        return self.refs[facet_index]

    def _write_members(self, facet_index: int, facet: str, node: ClusterNode, ref: int,
                       entry: dict[str, Any], node_path: list[str]) -> None:
        members = [cid for cid in dict.fromkeys(node.conversation_ids) if cid not in self.withheld_conversations]
        entry["n_members"] = len(members)
        entry["withheld_members"] = node.size - len(members)
        pages = max(1, -(-len(members) // self.chunk_size)) if members else 0
        for page in range(pages):
            rel = f"f{facet_index}/members/{ref}-{page}.json.gz"
            chunk = members[page * self.chunk_size:(page + 1) * self.chunk_size]
            self._write_json_gz(rel, {"facet": facet, "node_id": node.id, "page": page, "pages": pages,
                                      "members": [{"id": cid, "label": self._label(cid, facet)} for cid in chunk]})
            entry["member_files"].append(rel)
        for cid in members:
            self.paths.setdefault(cid, {})[facet] = {"path": node_path, "name": node.name}

    def _label(self, conversation_id: str, facet: str) -> str:
        value = self.values.get(conversation_id, {}).get(facet)
        text = value.value if value is not None and value.value is not None else "(no value)"
        return text if len(text) <= LABEL_MAX_CHARS else text[: LABEL_MAX_CHARS - 1] + "\u2026"

    # --- conversations ---

    def _write_conversations(self) -> int:
        shown = [c for c in self.result.conversations if c.id not in self.withheld_conversations]
        shown = list({c.id: c for c in shown}.values())  # last record of a duplicated id wins
        shown.sort(key=lambda c: _utf16_key(c.id))
        self.shown_conversations = len(shown)
        index = []
        for n, start in enumerate(range(0, len(shown), self.chunk_size)):
            chunk = shown[start:start + self.chunk_size]
            rel = f"conversations/{n:05d}.json.gz"
            self._write_json_gz(rel, {"conversations": [self._record(c) for c in chunk]})
            index.append({"file": rel, "first": chunk[0].id, "last": chunk[-1].id, "count": len(chunk)})
        self._write_json_gz(CONVERSATION_INDEX_FILE, {"chunks": index})
        return len(index)

    def _record(self, conversation: Conversation) -> dict[str, Any]:
        values = self.values.get(conversation.id, {})
        record: dict[str, Any] = {
            "id": conversation.id,
            "facets": {name: {"value": v.value, "numeric": v.numeric} for name, v in values.items()},
            "clusters": self.paths.get(conversation.id, {}),
        }
        if self.show_conversations:
            record["messages"] = [{"role": m.role, "content": m.content} for m in conversation.messages]
            record["timestamp"] = conversation.timestamp
        return record


# --- atomic replacement ---

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything that does not look like a site we wrote (no accidental rm -rf)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise FileExistsError(f"{out_dir} exists and is not a site directory")
    if any(out_dir.iterdir()) and not (out_dir / "index.html").exists() and not (out_dir / DATA_DIR).is_dir():
        raise FileExistsError(f"{out_dir} is not empty and does not look like a clio-stream site; refusing to replace it")


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        log.debug("renameat2(RENAME_EXCHANGE) failed: %s", os.strerror(ctypes.get_errno()))
        return False
    return True


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Put the freshly built ``tmp`` at ``out_dir``; the old site (if any) is removed afterwards."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    if _rename_exchange(tmp, out_dir):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old site
        return
    # Fallback: two renames; readers may see a missing directory for microseconds, never a partial one.
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
