"""Filters and slices for the routes: the filter a request asks for (for the caller's role), and the filtered
trees of the current version, computed once per (version, facet, filter) and kept in a small cache.

The rule of what a filtered answer may show is ``privacy.visibility`` (``filtered_rows``); the work is in
``clio_stream.views.slices``. The minimums are the stricter of the API's settings and the version's own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from fastapi import HTTPException, Request

from api.auth import Principal
from api.views import FacetView, VersionView
from clio_stream.domain.metadata import visible_keys
from clio_stream.privacy.visibility import Minimums
from clio_stream.settings import ClioSettings
from clio_stream.views.filters import Filter, FilterError, parse_filter
from clio_stream.views.slices import SliceIndex

_CACHE_SIZE = 64


def build_slices(view: VersionView, result_settings: dict[str, Any], settings: ClioSettings,
                 result: Any) -> SliceIndex:
    """The slice index of one version (every declared metadata key; roles are applied per request)."""
    keys = [k.name for k in settings.metadata_keys]
    return SliceIndex.of(result, view.facet_views, list(view.withheld), keys, Minimums.of(settings, result_settings))


def role_name(principal: Principal) -> str:
    return principal.role.name


def metadata_keys_for(settings: ClioSettings, principal: Principal) -> list[str]:
    """The declared metadata keys the caller's role may see."""
    return visible_keys(settings.metadata_keys, role_name(principal))


def request_filter(request: Request, view: VersionView, settings: ClioSettings, principal: Principal) -> Filter:
    """The filter in the request's query string; 400 with the reason when it is not allowed."""
    params = list(request.query_params.multi_items())
    visible = {name: {nid: fv.hierarchy.nodes[nid].conversation_ids for nid in fv.visible}
               for name, fv in view.facet_views.items()}
    try:
        return parse_filter(params, facets=view.facets, visible_clusters=visible,
                            metadata_keys=metadata_keys_for(settings, principal), window_s=settings.filter_time_cell_s,
                            time_from=request.query_params.get("from"), time_to=request.query_params.get("to"))
    except FilterError as exc:
        raise HTTPException(400, str(exc)) from None


class FilteredTrees:
    """Filtered tree answers by (version identity, facet, filter): the rows shown per node and the tree JSON."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()

    def get(self, index: SliceIndex, view: VersionView, fv: FacetView, flt: Filter) -> tuple[dict[str, Any], dict[str, Any]]:
        """(node id -> rows shown, the tree answer) of ``fv`` under ``flt``."""
        key = (view.version, id(index), fv.name, flt.key)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        value = (index.shown(fv, flt), index.tree(fv, flt, view.version))
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return value
