(function () {
  "use strict";
  // The dashboard's views beside the tree (clio_stream/site/static/views.js, inlined into index.html):
  // the cluster map, a cluster's breakdown, "what changed", and, when the clio-stream API serves the page,
  // filters and "where would this go" search. Their state lives in the URL hash next to the tree's:
  // view=map|changes, mz=x,y,zoom (map position), bd=<cluster id> (breakdown), flt=<filter query>.
  const site = window.clioSite;
  if (!site) return;
  const el = site.el;
  // replaceChildren would write a null child as the text "null": optional parts are left out instead.
  const fill = (node, ...kids) => node.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
  const fmtInt = site.fmtInt;
  const apiMeta = document.querySelector('meta[name="clio-api"]');
  const api = apiMeta ? (apiMeta.getAttribute("content") || "/v1").replace(/\/+$/, "") : null;
  const $ = (id) => document.getElementById(id);
  const els = { controls: $("views-controls"), bar: $("views-bar"), map: $("map-panel"), changes: $("changes-panel"),
                tree: $("tree"), filtered: $("filtered-tree"), breakdown: $("breakdown-panel"), main: $("main"),
                info: $("facet-info") };
  const SVG = "http://www.w3.org/2000/svg";

  // ---------- hash state of the views ----------
  function extra() {
    const out = {};
    for (const [k, v] of site.currentState().extra || []) {
      try { out[k] = decodeURIComponent(v); } catch (e) { out[k] = v; }
    }
    return out;
  }
  function setExtra(changes, extraMutate) {
    site.update((s) => {
      for (const [key, value] of Object.entries(changes)) {
        s.extra = s.extra.filter(([k]) => k !== key);
        if (value !== null && value !== undefined && value !== "") s.extra.push([key, encodeURIComponent(value)]);
      }
      if (extraMutate) extraMutate(s);
    });
  }
  function facetEntry() {
    const name = site.state && site.state.facet;
    return site.manifest ? site.manifest.facets.find((f) => f.name === name) : null;
  }
  function views() { return (site.manifest && site.manifest.views) || { maps: {}, breakdowns: {}, changes: null }; }
  async function apiGet(path) {
    const resp = await fetch(api + path, { credentials: "same-origin", cache: "no-store" });
    if (!resp.ok) {
      let detail = "HTTP " + resp.status;
      try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(detail);
    }
    return resp.json();
  }
  function openInTree(facet, node) {
    // Leave the map, open the ancestors (and a parent itself) so the cluster shows, then highlight it.
    site.focusAfterRender(node.id);
    setExtra({ view: null }, (s) => {
      if (s.facet !== facet) { s.open = []; s.more = {}; }
      s.facet = facet;
      s.open = s.open.concat(node.path || [], node.level > 0 ? [node.id] : []);
    });
  }

  // ---------- controls in the header ----------
  function tabButton(view, label) {
    return el("button", { class: "tab", testid: "view-" + view, role: "tab", onclick: () => setExtra({ view: view === "tree" ? null : view }) }, label);
  }
  const tabBar = el("span", { class: "tabs", role: "tablist" }, tabButton("tree", "Tree"), tabButton("map", "Map"),
                    tabButton("changes", "What changed"));
  els.controls.append(tabBar);
  let whereBox = null, whereList = null;
  if (api) {
    els.controls.append(el("button", { class: "tab", testid: "filter-toggle", onclick: () => { els.bar.hidden = !els.bar.hidden; renderBar(); } }, "Filter"));
    whereBox = el("input", { id: "where-search", testid: "where-search", type: "search", autocomplete: "off",
                             placeholder: "Where would this go? Type a sentence…", "aria-label": "Where would this text go" });
    whereList = el("div", { class: "where-results", testid: "where-results", hidden: true });
    els.controls.append(el("span", { class: "where" }, whereBox, whereList));
  }

  // ---------- filters (API only) ----------
  function activeFilter() { return extra().flt || ""; }
  function filterPairs(query) {
    return query.split("&").filter(Boolean).map((p) => { try { return decodeURIComponent(p); } catch (e) { return p; } });
  }
  function fieldOptions() {
    const out = [];
    for (const f of site.manifest.facets) {
      if (f.name === (site.state && site.state.facet)) continue;
      if (f.numeric) out.push({ name: f.name, kind: "numeric", label: f.name + " (" + f.numeric[0] + "–" + f.numeric[1] + ")" });
      else if (!f.has_hierarchy) out.push({ name: f.name, kind: "value", label: f.name });
    }
    for (const k of views().metadata_keys || []) out.push({ name: "metadata." + k, kind: "metadata", label: "metadata." + k });
    return out;
  }
  function renderBar() {
    if (!api || !site.manifest) return;
    const pairs = filterPairs(activeFilter());
    const chips = pairs.map((p) => el("span", { class: "chip", testid: "filter-chip" }, p,
      el("button", { class: "chip-x", "aria-label": "Remove " + p, onclick: () => {
        setExtra({ flt: pairs.filter((x) => x !== p).map(encodeURIComponent).join("&") });
      } }, "×")));
    const fields = fieldOptions();
    const field = el("select", { testid: "filter-field" }, fields.map((f) => el("option", { value: f.name, text: f.label })));
    const op = el("select", { testid: "filter-op" }, ["=", ">=", "<="].map((o) => el("option", { value: o, text: o })));
    const value = el("input", { testid: "filter-value", placeholder: "value", size: 12 });
    const from = el("input", { testid: "filter-from", type: "date", title: "From (conversation time, UTC)" });
    const to = el("input", { testid: "filter-to", type: "date", title: "To (conversation time, UTC)" });
    const apply = el("button", { class: "apply", testid: "filter-apply", onclick: () => {
      const next = pairs.slice();
      if (value.value.trim()) next.push(field.value + op.value + value.value.trim());
      if (from.value) next.push("from=" + from.value);
      if (to.value) next.push("to=" + to.value);
      setExtra({ flt: next.map(encodeURIComponent).join("&") });
    } }, "Apply");
    fill(els.bar, el("strong", {}, "Filter"), ...chips, field, op, value,
      el("label", {}, "from ", from), el("label", {}, "to ", to), apply,
      pairs.length ? el("button", { class: "chip-x clear", testid: "filter-clear", onclick: () => setExtra({ flt: null }) }, "Clear") : null,
      el("span", { class: "note" }, "Counts are over the filtered conversations; clusters too small under a filter are not shown."));
  }
  function filterQuery() {
    return filterPairs(activeFilter()).map((p) => {
      const i = p.search(/[<>]?=/);
      return i < 0 ? encodeURIComponent(p) : encodeURIComponent(p.slice(0, i)) + (p[i] === "=" ? "=" : encodeURIComponent(p[i]) + "=") +
        encodeURIComponent(p.slice(p[i] === "=" ? i + 1 : i + 2));
    }).join("&");
  }
  async function renderFiltered(facet) {
    const flt = api ? activeFilter() : "";
    els.filtered.hidden = !flt || extra().view === "map" || extra().view === "changes";
    els.tree.hidden = !!flt || extra().view === "map" || extra().view === "changes";
    if (!flt || !facet) { els.filtered.replaceChildren(); return; }
    let data;
    try { data = await apiGet("/facets/" + encodeURIComponent(facet.name) + "/tree?" + filterQuery()); }
    catch (err) {
      els.filtered.replaceChildren(el("li", { class: "error", testid: "filter-error", text: "Filter refused: " + err.message }));
      return;
    }
    const total = data.total;
    const row = (n) => {
      const pct = total ? Math.min(100, 100 * n.size / total) : 0;
      const mean = Object.entries(n.numeric || {}).filter(([, st]) => st.mean !== null)
        .map(([k, st]) => k + " avg " + Number(st.mean).toFixed(2)).join(" · ");
      const body = [el("div", { class: "fmain" }, el("span", { class: "name", text: n.name }),
          el("div", { class: "summary", text: n.summary }), mean ? el("div", { class: "numeric", text: mean }) : null),
        el("div", { class: "row-side" },
          el("span", { class: "figures" }, el("span", { class: "size", text: fmtInt(n.size) }), " conv. · " + fmtInt(n.distinct_users) + " users",
            el("span", { class: "share", "aria-hidden": "true" }, el("span", { style: "width:" + pct.toFixed(1) + "%" }))),
          el("button", { class: "bd-btn", testid: "fbreakdown-" + n.id, onclick: (ev) => { ev.preventDefault(); setExtra({ bd: n.id }); } }, "Breakdown"))];
      if (!n.children.length) return el("li", { class: "fnode leaf", testid: "fnode-" + n.id }, el("div", { class: "frow" }, ...body));
      return el("li", { class: "fnode", testid: "fnode-" + n.id },
        el("details", {}, el("summary", { class: "frow" }, ...body), el("ul", {}, n.children.map(row))));
    };
    els.filtered.replaceChildren(
      el("li", { class: "note filtered-total", testid: "filtered-total" }, el("strong", { text: fmtInt(total) }),
        " conversations of " + facet.name + " match ", el("strong", { text: data.filter.split("&").join(" and ") }),
        " in clusters large enough to show under it."),
      ...(data.roots.length ? data.roots.map(row) :
        [el("li", { class: "note", testid: "filtered-empty", text: "No cluster is large enough to show under this filter." })]));
  }

  // ---------- the map ----------
  let mapData = null;   // { key, nodes, method }
  const view = { x: 0, y: 0, k: 1 };
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f",
                   "#ff9da7", "#6b8e23", "#8c6bb1", "#d37295"];
  function groupOf(n) { return n.path && n.path.length ? n.path[0] : n.id; }
  function colourOf(mode, nodes, groups) {
    if (mode === "group") return (n) => PALETTE[groups.indexOf(groupOf(n)) % PALETTE.length];
    const val = (n) => mode === "growth" ? (n.growth === null || n.growth === undefined ? null : n.growth) :
      mode.startsWith("mean:") ? (n.means ? n.means[mode.slice(5)] : null) : Math.log1p(n.size);
    const vals = nodes.map(val).filter((v) => v !== null && v !== undefined);
    const lo = Math.min(...vals), hi = Math.max(...vals);
    return (n) => {
      const v = val(n);
      if (v === null || v === undefined || !isFinite(lo)) return "#b8c0cc";
      const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
      const hue = mode === "growth" ? 30 : mode.startsWith("mean:") ? 0 : 215;
      return "hsl(" + hue + ", " + Math.round(45 + 35 * t) + "%, " + Math.round(80 - 42 * t) + "%)";
    };
  }
  async function loadMap(facet) {
    const flt = api ? activeFilter() : "";
    const key = site.version + "|" + facet.name + "|" + flt;
    if (mapData && mapData.key === key) return mapData;
    let data;
    if (flt) data = await apiGet("/facets/" + encodeURIComponent(facet.name) + "/map?" + filterQuery());
    else {
      const file = views().maps[facet.name];
      if (!file) return null;
      data = await site.load(file);
    }
    mapData = { key: key, nodes: data.nodes, method: data.method };
    return mapData;
  }
  function saveMapPosition() {
    const s = site.currentState();
    s.extra = s.extra.filter(([k]) => k !== "mz");
    s.extra.push(["mz", [view.x.toFixed(3), view.y.toFixed(3), view.k.toFixed(2)].join(",")]);
    history.replaceState(null, "", "#" + hashOf(s));
  }
  function hashOf(s) {
    // The tree's own formatter is private; rebuild the hash by replacing only mz.
    const parts = location.hash.replace(/^#/, "").split("&").filter((p) => p && !p.startsWith("mz="));
    const mz = s.extra.find(([k]) => k === "mz");
    if (mz) parts.push("mz=" + mz[1]);
    return parts.join("&");
  }
  let saveTimer = null;
  async function renderMap(facet) {
    const show = extra().view === "map";
    els.map.hidden = !show;
    if (!show || !facet) return;
    const data = await loadMap(facet).catch((err) => { els.map.replaceChildren(el("p", { class: "error", text: "Map unavailable: " + err.message })); return undefined; });
    if (data === undefined) return;
    if (!data || !data.nodes.length) {
      els.map.replaceChildren(el("p", { class: "note", testid: "map-empty", text: "This version has no map of " + facet.name + "." }));
      return;
    }
    const mz = (extra().mz || "").split(",").map(Number);
    if (mz.length === 3 && mz.every(isFinite) && mz[2] > 0) { view.x = mz[0]; view.y = mz[1]; view.k = mz[2]; }
    const numeric = (site.manifest.numeric_facets || []).map((f) => f.name);
    const mode = extra().mc || "group";
    const top = Math.max(...data.nodes.map((n) => n.level));
    const groups = data.nodes.filter((n) => n.level === top).sort((x, y) => y.size - x.size).map((n) => n.id);
    const leaves = data.nodes.filter((n) => n.level === 0);
    const colour = colourOf(mode, leaves, groups);
    const W = 1000, H = 640;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("data-testid", "map-svg");
    svg.setAttribute("class", "map" + (leaves.length <= 30 ? " few" : ""));
    const g = document.createElementNS(SVG, "g");
    svg.append(g);
    const maxLeaf = Math.max(1, ...leaves.map((n) => n.size));
    const at = new Map(data.nodes.map((n) => [n.id, { cx: 40 + n.x * (W - 80), cy: 40 + n.y * (H - 70) }]));
    const radius = new Map(leaves.map((n) => [n.id, 5 + 15 * Math.sqrt(n.size / maxLeaf)]));
    for (const n of data.nodes.filter((m) => m.level > 0).sort((x, y) => x.level - y.level)) {
      // A parent's circle encloses its shown children's circles (t-SNE keeps siblings together: views/layout.py).
      const c = at.get(n.id);
      let r = 12;
      for (const kid of data.nodes) {
        if (kid.parent_id !== n.id || !radius.has(kid.id)) continue;
        const p = at.get(kid.id);
        r = Math.max(r, Math.hypot(p.cx - c.cx, p.cy - c.cy) + radius.get(kid.id) + 5);
      }
      radius.set(n.id, r);
    }
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;   // fit the view to every circle and label
    for (const n of data.nodes) {
      const { cx, cy } = at.get(n.id), r = radius.get(n.id) || 0;
      x0 = Math.min(x0, cx - r - 20); x1 = Math.max(x1, cx + r + 20); y0 = Math.min(y0, cy - r - 26); y1 = Math.max(y1, cy + r + 18);
    }
    svg.setAttribute("viewBox", [x0, y0, x1 - x0, y1 - y0].map((v) => v.toFixed(1)).join(" "));
    let pointsNote = null;
    if (api && extra().mp) {   // a sample of conversations (analysts): small dots under the clusters
      try {
        const sep = filterQuery() ? "&" + filterQuery() : "";
        const withPoints = await apiGet("/facets/" + encodeURIComponent(facet.name) + "/map?points=true" + sep);
        for (const p of withPoints.points || []) {
          const dot = document.createElementNS(SVG, "circle");
          const cx = 40 + p.x * (W - 80), cy = 40 + p.y * (H - 70);
          dot.setAttribute("cx", cx.toFixed(1)); dot.setAttribute("cy", cy.toFixed(1)); dot.setAttribute("r", "1.8");
          dot.setAttribute("class", "point");
          g.append(dot);
        }
        pointsNote = fmtInt((withPoints.points || []).length) + " sampled conversations shown";
      } catch (err) { pointsNote = "Conversations on the map: " + err.message; }
    }
    const ordered = data.nodes.slice().sort((a, b) => b.level - a.level || b.size - a.size);
    const labels = [];
    for (const n of ordered) {
      const { cx, cy } = at.get(n.id);
      const r = radius.get(n.id);
      const c = document.createElementNS(SVG, "circle");
      c.setAttribute("cx", cx.toFixed(1)); c.setAttribute("cy", cy.toFixed(1)); c.setAttribute("r", r.toFixed(1));
      c.setAttribute("class", n.level === 0 ? "leaf" : "parent level-" + n.level + (n.level === top ? " top" : ""));
      c.setAttribute("data-testid", "map-node-" + n.id);
      c.setAttribute("data-node-id", n.id);
      if (n.level === 0) c.setAttribute("fill", colour(n));
      else if (n.level === top) c.style.setProperty("--group", PALETTE[groups.indexOf(n.id) % PALETTE.length]);
      const t = document.createElementNS(SVG, "title");
      const growth = n.growth === null || n.growth === undefined ? "" : " · growth " + Math.round(100 * n.growth) + "%";
      const means = Object.entries(n.means || {}).filter(([, v]) => v !== null).map(([k, v]) => " · " + k + " " + Number(v).toFixed(2)).join("");
      t.textContent = n.name + " — " + fmtInt(n.size) + " conversations, " + fmtInt(n.distinct_users) + " users" + growth + means;
      c.append(t);
      c.addEventListener("click", (ev) => { ev.stopPropagation(); openInTree(facet.name, n); });
      g.append(c);
      if (n.level === top || n.level === 0) labels.push({ n: n, cx: cx, cy: cy, r: r });
    }
    for (const { n, cx, cy, r } of labels) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", cx.toFixed(1));
      text.setAttribute("y", (n.level === 0 ? cy + r + 12 : cy - r - 5).toFixed(1));
      text.setAttribute("class", n.level === 0 ? "label leaf-label" : "label top-label");
      text.textContent = n.name.length > 34 ? n.name.slice(0, 33) + "…" : n.name;
      g.append(text);
    }
    function apply() {
      g.setAttribute("transform", "translate(" + view.x.toFixed(2) + " " + view.y.toFixed(2) + ") scale(" + view.k.toFixed(3) + ")");
      svg.classList.toggle("zoomed", view.k >= 1.8);
      svg.style.setProperty("--label-scale", (1 / view.k).toFixed(3));
      clearTimeout(saveTimer);
      saveTimer = setTimeout(saveMapPosition, 250);
    }
    svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const box = svg.getBoundingClientRect();
      const px = (ev.clientX - box.left) * W / box.width, py = (ev.clientY - box.top) * H / box.height;
      const k = Math.min(12, Math.max(0.5, view.k * Math.pow(1.0015, -ev.deltaY)));
      view.x = px - (px - view.x) * k / view.k; view.y = py - (py - view.y) * k / view.k; view.k = k;
      apply();
    }, { passive: false });
    let drag = null;
    svg.addEventListener("pointerdown", (ev) => { if (ev.target === svg || ev.target.tagName === "text") drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y }; });
    window.addEventListener("pointerup", () => { drag = null; });
    svg.addEventListener("pointermove", (ev) => {
      if (!drag) return;
      const box = svg.getBoundingClientRect();
      view.x = drag.vx + (ev.clientX - drag.x) * W / box.width; view.y = drag.vy + (ev.clientY - drag.y) * H / box.height;
      apply();
    });
    g.setAttribute("transform", "translate(" + view.x + " " + view.y + ") scale(" + view.k + ")");
    svg.classList.toggle("zoomed", view.k >= 1.8);
    svg.style.setProperty("--label-scale", (1 / view.k).toFixed(3));
    const colourSelect = el("select", { testid: "map-colour", onchange: (ev) => setExtra({ mc: ev.target.value === "group" ? null : ev.target.value }) },
      [["group", "Colour: top-level group"], ["size", "Colour: size"], ["growth", "Colour: growth"],
       ...numeric.map((n) => ["mean:" + n, "Colour: mean " + n])]
        .map(([v, label]) => el("option", { value: v, text: label, selected: v === mode })));
    const pointsToggle = api ? el("label", { class: "map-toggle", title: "A sample of conversations, placed among their clusters (needs an analyst key)" },
      el("input", { type: "checkbox", testid: "map-points", checked: !!extra().mp, onchange: (ev) => setExtra({ mp: ev.target.checked ? "1" : null }) }),
      " conversations") : null;
    const reset = el("button", { class: "map-btn", testid: "map-reset", onclick: () => { view.x = 0; view.y = 0; view.k = 1; setExtra({ mz: null }); } }, "Reset view");
    const filterNote = api && activeFilter() ? " · filtered: " + filterPairs(activeFilter()).join(", ") : "";
    fill(els.map,
      el("div", { class: "map-head" }, el("strong", { text: facet.name + " map" }),
        el("span", { class: "muted", text: " " + leaves.length + " base clusters (dots, sized by conversations) placed by " +
          (data.method === "tsne" ? "t-SNE" : "PCA") + " of their centroids, inside their parents' circles. Scroll to zoom, drag to pan, click any circle to open it in the tree." + filterNote }),
        colourSelect, pointsToggle, reset),
      pointsNote ? el("p", { class: "note", testid: "map-points-note", text: pointsNote }) : null,
      svg);
  }

  // ---------- breakdown panel ----------
  async function renderBreakdown(facet) {
    const id = extra().bd;
    els.breakdown.hidden = !id;
    if (!id || !facet) { els.breakdown.replaceChildren(); return; }
    els.main.classList.remove("no-conversation");
    let data = null;
    try {
      if (api && activeFilter()) data = await apiGet("/facets/" + encodeURIComponent(facet.name) + "/clusters/" + encodeURIComponent(id) + "/breakdown?" + filterQuery());
      else if (views().breakdowns[facet.name]) {
        const all = await site.load(views().breakdowns[facet.name]);
        if (all.nodes[id]) data = { dimensions: all.nodes[id], size: all.nodes[id].length ? all.nodes[id][0].total : 0 };
      }
    } catch (err) { data = { error: err.message }; }
    const close = el("button", { class: "close", testid: "breakdown-close", "aria-label": "Close breakdown", onclick: () => setExtra({ bd: null }) }, "✕");
    const name = (data && data.name) || (document.querySelector('[data-testid="node-name-' + CSS.escape(id) + '"]') || {}).textContent || id;
    const head = el("div", { class: "conv-head" }, el("h2", { class: "bd-title", text: "Breakdown: " + name }), close);
    if (!data || data.error) {
      els.breakdown.replaceChildren(el("div", { testid: "breakdown-view" }, head,
        el("p", { class: "note", text: data && data.error ? data.error : "No breakdown for this cluster under the current view." })));
      return;
    }
    const dims = data.dimensions.map((d) => {
      const max = Math.max(1, ...d.buckets.map((b) => b.count), d.other);
      const rows = d.buckets.map((b) => el("div", { class: "bd-row" },
        el("span", { class: "bd-label", title: b.label, text: b.label }),
        el("span", { class: "bd-bar" }, el("span", { style: "width:" + (100 * b.count / max).toFixed(1) + "%" })),
        el("span", { class: "bd-count", text: fmtInt(b.count) + " · " + Math.round(100 * b.count / Math.max(1, d.total)) + "%" })));
      if (!d.buckets.length && d.other) rows.push(el("p", { class: "note", testid: "breakdown-withheld-" + d.dimension,
        text: "Not broken down: one of its groups here is too small to show apart from the rest (" + fmtInt(d.other) + " conversations)." }));
      else if (d.other) rows.push(el("div", { class: "bd-row other" }, el("span", { class: "bd-label", text: "Other (small groups)" }),
        el("span", { class: "bd-bar" }, el("span", { style: "width:" + (100 * d.other / max).toFixed(1) + "%" })),
        el("span", { class: "bd-count", text: fmtInt(d.other) })));
      if (!rows.length) rows.push(el("p", { class: "note", text: "Too few conversations to break down without identifying groups." }));
      return el("section", { class: "bd-dim", testid: "breakdown-dim-" + d.dimension }, el("h3", { text: d.dimension }), rows);
    });
    els.breakdown.replaceChildren(el("div", { testid: "breakdown-view", "data-node-id": id }, head,
      el("p", { class: "note", text: fmtInt(data.size) + " conversations" + (api && activeFilter() ? " under the filter" : "") +
        ". Groups below the privacy minimums are merged into “Other”." }), dims));
  }
  window.addEventListener("clio:breakdown", (ev) => setExtra({ bd: ev.detail.id }));

  // ---------- what changed ----------
  async function renderChanges(facet) {
    const show = extra().view === "changes";
    els.changes.hidden = !show;
    if (!show || !facet) return;
    const file = views().changes;
    if (!file) {
      els.changes.replaceChildren(el("p", { class: "note", testid: "changes-first", text: "This is the first published version: there is nothing to compare it with yet." }));
      return;
    }
    const data = await site.load(file);
    const f = data.facets[facet.name];
    const item = (n, extraText) => el("li", {}, el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); openInTree(facet.name, { id: n.id, level: n.level, path: n.path || [] }); } }, n.name),
      el("span", { class: "muted", text: " · " + fmtInt(n.size) + " conv." + (extraText || "") }));
    const section = (title, testid, items) => el("section", { class: "ch-section", testid: testid },
      el("h3", { text: title + " (" + items.length + ")" }), items.length ? el("ul", {}, items) : el("p", { class: "note", text: "None." }));
    const sign = (x) => (x > 0 ? "+" : "") + fmtInt(x);
    fill(els.changes,
      el("div", { class: "map-head" }, el("strong", { text: "What changed in " + facet.name }),
        el("span", { class: "muted", text: " from version " + data.from + " to " + data.to + ": " + fmtInt(f ? f.total_before : 0) + " → " + fmtInt(f ? f.total_after : 0) + " conversations" })),
      f ? el("div", { class: "ch-grid" },
        section("New clusters", "changes-new", f.new.map((n) => item(n))),
        section("Grew or shrank", "changes-sizes", f.size_changes.filter((n) => n.change !== 0).map((n) => item(n, " (" + sign(n.change) + ")"))),
        section("Renamed", "changes-renamed", f.size_changes.filter((n) => n.old_name).map((n) => item(n, ", was “" + n.old_name + "”"))),
        section("Merged", "changes-merged", f.merged.map((n) => item(n, " ← " + n.from.map((o) => o.name).join(" + ")))),
        section("Split", "changes-split", f.split.map((n) => el("li", {}, n.name, el("span", { class: "muted", text: " → " + n.into.map((o) => o.name).join(", ") })))),
        section("Vanished", "changes-vanished", f.vanished.map((n) => el("li", {}, n.name, el("span", { class: "muted", text: " · had " + fmtInt(n.size) + " conv." })))))
        : el("p", { class: "note", text: "This facet has no published tree in either version." }));
  }

  // ---------- where would this go (API only) ----------
  async function where(text) {
    whereList.hidden = false;
    whereList.replaceChildren(el("p", { class: "note", text: "Searching…" }));
    let data;
    try { data = await apiGet("/search?k=3&q=" + encodeURIComponent(text)); }
    catch (err) { whereList.replaceChildren(el("p", { class: "note", testid: "where-error", text: "Search failed: " + err.message })); return; }
    const blocks = Object.entries(data.facets).map(([facet, hits]) => el("section", {},
      el("h4", { text: facet }),
      hits.length ? hits.map((h) => el("button", { class: "search-hit", testid: "where-hit-" + h.id, onclick: () => {
        whereList.hidden = true;
        openInTree(facet, { id: h.id, level: h.path.length ? 0 : 1, path: h.path.map((p) => p.id) });
      } }, el("span", { class: "where-path", text: h.path.map((p) => p.name).concat([""]).join(" › ") }), h.name,
        el("span", { class: "sim", text: " " + Math.round(100 * h.similarity) + "%" }))) :
        el("p", { class: "note", text: "No visible cluster." })));
    whereList.replaceChildren(el("p", { class: "note", text: "Nearest visible clusters (the text is not stored):" }), ...blocks);
  }
  if (whereBox) {
    whereBox.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && whereBox.value.trim()) where(whereBox.value.trim());
      if (ev.key === "Escape") { whereList.hidden = true; whereBox.value = ""; }
    });
  }

  // ---------- render on every tree render ----------
  let gen = 0;
  async function renderViews() {
    if (!site.manifest) return;
    const mine = ++gen;
    const facet = facetEntry();
    const v = extra().view || "tree";
    for (const b of tabBar.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.testid === "view-" + v);
    els.info.hidden = v !== "tree";
    document.body.dataset.views = "loading";
    try {
      if (api && !els.bar.hidden) renderBar();
      if (api && activeFilter()) { els.bar.hidden = false; renderBar(); }
      await renderFiltered(facet);
      await renderMap(facet);
      await renderChanges(facet);
      await renderBreakdown(facet);
    } catch (err) {
      console.error(err);
    }
    if (mine === gen) document.body.dataset.views = "ready";
  }
  window.addEventListener("clio:rendered", renderViews);
})();
