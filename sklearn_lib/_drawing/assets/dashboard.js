/* sklearn-lib feature dashboard.
 *
 * Reads the payload from <script id="lib-dashboard-data"> and builds the page:
 * the interaction graph on one <canvas> (zoom, pan, an edge-strength slider,
 * click to select) and a card per shown feature. Offline by design: it loads
 * nothing, and inserts every string from the payload as text, never as HTML.
 * window.LIBDashboard is the page's test API (see dashboard_page.py).
 */
(function () {
  "use strict";

  // A fixed categorical palette for graph modules (no grey: grey means "no module").
  var PALETTE = [
    "#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8", "#84584e",
    "#d57dbf", "#bcbc45", "#57bcc7", "#1a9e77", "#e7298a", "#e6ab02"
  ];
  var NO_MODULE = "#a9afb7";
  var EDGE_RGB = "72, 88, 120";
  var IN_COLOUR = "#d9480f";   // edges into the selected feature
  var OUT_COLOUR = "#1864ab";  // edges out of it
  var SLIDER_MIN = -4;         // log10 of the slider's lowest threshold: there, all edges
  var BUCKETS = 8;             // edge styles: one stroke per style keeps 10,000 edges fast
  var LABEL_BAND = 44;         // CSS px at the canvas top kept for the column labels
  var EXAMPLE_COLUMNS = 32;    // tabular examples show this many columns at most

  var api = {
    ready: false, loadMs: null, renderMs: null, error: null
  };
  window.LIBDashboard = api;

  /* ---------------------------------------------------------------- helpers */

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function fmt(x) {
    if (x === null || x === undefined || typeof x !== "number") { return "\u2014"; }
    var a = Math.abs(x);
    var text;
    if (a === 0) { text = "0"; }
    else if (a >= 1e4 || a < 1e-3) { text = x.toExponential(2); }
    else { text = String(Number(x.toPrecision(3))); }
    return text.replace("-", "\u2212");
  }

  function count(n) {
    return typeof n === "number" ? n.toLocaleString("en") : "\u2014";
  }

  function signed(x) {
    return (x > 0 ? "+" : "") + fmt(x);
  }

  function percent(share) {
    var p = 100 * share;
    return (p >= 10 ? p.toFixed(1) : p.toFixed(2)) + "%";
  }

  function colourOf(module) {
    if (module === null || module === undefined) { return NO_MODULE; }
    var m = Math.abs(Math.floor(module));
    return PALETTE[m % PALETTE.length];
  }

  function clamp(x, lo, hi) {
    return Math.max(lo, Math.min(hi, x));
  }

  // First position in the ascending array `a` holding a value >= x.
  function lowerBound(a, x) {
    var lo = 0, hi = a.length;
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (a[mid] < x) { lo = mid + 1; } else { hi = mid; }
    }
    return lo;
  }

  function cardId(vi, ni, index) {
    return "lib-card-" + vi + "-" + ni + "-" + index;
  }

  /* ------------------------------------------------------------- the model */

  var data = JSON.parse(document.getElementById("lib-dashboard-data").textContent);
  var kind = data.input.kind;

  function prepareNode(spec) {
    var features = spec.features || [];
    var byIndex = new Map();
    features.forEach(function (f, fi) {
      if (!byIndex.has(f.index)) { byIndex.set(f.index, fi); }
    });
    return {
      spec: spec, name: String(spec.name), features: features, byIndex: byIndex,
      x: 0, ys: new Float32Array(features.length), r: new Float32Array(features.length)
    };
  }

  function prepareView(spec, vi) {
    var nodes = (spec.nodes || []).map(prepareNode);
    var nodeIndex = new Map();
    nodes.forEach(function (node, ni) {
      if (!nodeIndex.has(node.name)) { nodeIndex.set(node.name, ni); }
    });
    var view = {
      spec: spec, vi: vi, name: String(spec.name), nodes: nodes, nodeIndex: nodeIndex,
      transform: { k: 1, x: 0, y: 0 }, edges: null, cards: [], container: null, laidOut: null
    };
    view.edges = prepareEdges(view);
    return view;
  }

  // Gathers every section's edges, sorted by weight relative to its section's largest
  // (weakest first), so a threshold is one binary search and styles come in runs.
  function prepareEdges(view) {
    var list = [];
    (view.spec.sections || []).forEach(function (section) {
      var s = view.nodeIndex.get(String(section.source));
      var t = view.nodeIndex.get(String(section.target));
      if (s === undefined || t === undefined) { return; }
      var w = section.weight || [];
      var largest = 0;
      for (var e = 0; e < w.length; e++) { largest = Math.max(largest, Math.abs(w[e])); }
      for (e = 0; e < w.length; e++) {
        var a = view.nodes[s].byIndex.get(section.src[e]);
        var b = view.nodes[t].byIndex.get(section.dst[e]);
        if (a === undefined || b === undefined) { continue; }
        list.push([largest > 0 ? Math.abs(w[e]) / largest : 0, s, a, t, b, w[e]]);
      }
    });
    list.sort(function (p, q) { return p[0] - q[0]; });
    var n = list.length;
    var edges = {
      n: n, rel: new Float32Array(n), weight: new Float64Array(n),
      s: new Int32Array(n), a: new Int32Array(n), t: new Int32Array(n), b: new Int32Array(n),
      incident: view.nodes.map(function (node) {
        return node.features.map(function () { return []; });
      })
    };
    list.forEach(function (item, e) {
      edges.rel[e] = item[0]; edges.s[e] = item[1]; edges.a[e] = item[2];
      edges.t[e] = item[3]; edges.b[e] = item[4]; edges.weight[e] = item[5];
      edges.incident[item[1]][item[2]].push(e);
      edges.incident[item[3]][item[4]].push(e);
    });
    return edges;
  }

  var views = data.views.map(prepareView);
  var state = { view: 0, threshold: 0, selected: null, drawn: 0, hover: null };

  function current() {
    return views[state.view];
  }

  function findFeature(view, nodeName, index) {
    var ni = view.nodeIndex.get(String(nodeName));
    if (ni === undefined) { return null; }
    var fi = view.nodes[ni].byIndex.get(Number(index));
    return fi === undefined ? null : { ni: ni, fi: fi };
  }

  /* ------------------------------------------------------------ the header */

  var root = document.getElementById("lib-dashboard");
  root.textContent = "";

  function buildHeader() {
    var header = el("header", "dash-header");
    var titleRow = el("div", "title-row");
    titleRow.appendChild(el("h1", "dash-title", data.title));
    titleRow.appendChild(el("span", "dash-version", "sklearn-lib " + data.version));
    header.appendChild(titleRow);
    if ((data.notes || []).length) {
      var notes = el("ul", "dash-notes");
      data.notes.forEach(function (note) { notes.appendChild(el("li", null, note)); });
      header.appendChild(notes);
    }
    if (views.length > 1) {
      var tabs = el("div", "view-tabs");
      tabs.setAttribute("role", "tablist");
      views.forEach(function (view) {
        var tab = el("button", "view-tab", view.name);
        tab.type = "button";
        tab.setAttribute("role", "tab");
        tab.dataset.view = view.name;
        tab.addEventListener("click", function () { setView(view.vi); });
        view.tab = tab;
        tabs.appendChild(tab);
      });
      titleRow.appendChild(tabs);
    }
    return header;
  }

  /* ------------------------------------------------------- the graph panel */

  var canvas, ctx, slider, edgeCount, selectionInfo, tip, canvasWrap;
  var size = { w: 0, h: 0, dpr: 1 };

  function buildGraphPanel() {
    var panel = el("section", "graph-panel");
    panel.setAttribute("aria-label", "Interaction graph");
    var controls = el("div", "graph-controls");
    var label = el("label", "edge-filter");
    label.appendChild(el("span", "control-name", "Edge strength"));
    slider = el("input", "edge-slider");
    slider.type = "range";
    slider.min = String(SLIDER_MIN);
    slider.max = "0";
    slider.step = "0.05";
    slider.value = String(SLIDER_MIN);
    slider.setAttribute("aria-label", "Hide edges weaker than this fraction of the strongest");
    label.appendChild(slider);
    controls.appendChild(label);
    edgeCount = el("span", "edge-count");
    edgeCount.setAttribute("aria-live", "polite");
    controls.appendChild(edgeCount);
    var reset = el("button", "reset-view", "Reset view");
    reset.type = "button";
    reset.addEventListener("click", function () {
      var t = current().transform;
      t.k = 1; t.x = 0; t.y = 0;
      requestDraw();
    });
    controls.appendChild(reset);
    panel.appendChild(controls);
    selectionInfo = el("div", "selection-info");
    panel.appendChild(selectionInfo);
    canvasWrap = el("div", "graph-canvas-wrap");
    canvas = el("canvas", "graph-canvas");
    canvas.tabIndex = 0;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "Interaction graph: drag to pan, wheel to zoom, click a dot");
    ctx = canvas.getContext("2d");
    tip = el("div", "graph-tip");
    tip.hidden = true;
    canvasWrap.appendChild(canvas);
    canvasWrap.appendChild(tip);
    panel.appendChild(canvasWrap);
    panel.appendChild(el("p", "graph-hint",
      "Columns are node layers; dot size is the feature's share of Lambda, colour its module. " +
      "Drag to pan, wheel to zoom, click a dot to open its card."));
    slider.addEventListener("input", onSlider);
    return panel;
  }

  function onSlider() {
    var v = parseFloat(slider.value);
    state.threshold = v <= SLIDER_MIN ? 0 : Math.pow(10, v);
    updateEdgeCount();
    requestDraw();
  }

  function updateEdgeCount() {
    var edges = current().edges;
    var shown = edges.n - lowerBound(edges.rel, state.threshold);
    var text = shown.toLocaleString("en") + " of " + edges.n.toLocaleString("en") + " edges shown";
    if (state.threshold > 0) { text += " (\u2265 " + fmt(state.threshold) + " \u00d7 strongest)"; }
    edgeCount.textContent = text;
    slider.disabled = edges.n === 0;
  }

  // Lays a view's dots out for the canvas size: columns left to right, features top down.
  function layout(view) {
    var w = size.w, h = size.h, n = view.nodes.length;
    var side = clamp(w * 0.09, 36, 110);
    view.nodes.forEach(function (node, i) {
      node.x = n === 1 ? w / 2 : side + (i * (w - 2 * side)) / (n - 1);
      var m = node.features.length;
      var step = (h - LABEL_BAND - 14) / Math.max(m, 1);
      node.features.forEach(function (f, j) {
        var share = clamp(Number(f.share) || 0, 0, 1);
        node.ys[j] = LABEL_BAND + (j + 0.5) * step;
        node.r[j] = Math.max(1.6, Math.min(2.5 + 10 * Math.sqrt(share), step * 0.5));
      });
    });
    view.laidOut = w + "x" + h;
  }

  function resize() {
    var rect = canvasWrap.getBoundingClientRect();
    var dpr = window.devicePixelRatio || 1;
    var w = Math.max(1, Math.floor(rect.width)), h = Math.max(1, Math.floor(rect.height));
    if (w === size.w && h === size.h && dpr === size.dpr) { return false; }
    size.w = w; size.h = h; size.dpr = dpr;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
    return true;
  }

  function dotRadius(node, fi, k) {
    return node.r[fi] * Math.sqrt(k);
  }

  function toScreen(t, x, y) {
    return { x: t.x + t.k * x, y: t.y + t.k * y };
  }

  var drawPending = false;

  function requestDraw() {
    if (drawPending) { return; }
    drawPending = true;
    window.requestAnimationFrame(function () {
      drawPending = false;
      draw();
    });
  }

  function draw() {
    var view = current();
    if (view.laidOut !== size.w + "x" + size.h) { layout(view); }
    ctx.setTransform(size.dpr, 0, 0, size.dpr, 0, 0);
    ctx.clearRect(0, 0, size.w, size.h);
    drawGuides(view);
    state.drawn = drawEdges(view);
    drawHighlights(view);
    drawDots(view);
    drawLabels(view);
  }

  function drawGuides(view) {
    var t = view.transform;
    ctx.strokeStyle = "rgba(120, 130, 150, 0.18)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    view.nodes.forEach(function (node) {
      var x = Math.round(t.x + t.k * node.x) + 0.5;
      ctx.moveTo(x, LABEL_BAND - 6);
      ctx.lineTo(x, size.h);
    });
    ctx.stroke();
  }

  function edgeStyle(bucket, k, dim) {
    var level = (bucket + 1) / BUCKETS;
    var alpha = (0.07 + 0.6 * level * level) * (dim ? 0.22 : 1);
    ctx.strokeStyle = "rgba(" + EDGE_RGB + ", " + alpha.toFixed(3) + ")";
    ctx.lineWidth = (0.5 + 2.6 * level * level) * Math.min(2, Math.sqrt(k));
  }

  // Draws the edges above the threshold as one path per style; returns how many it drew.
  function drawEdges(view) {
    var E = view.edges, t = view.transform, nodes = view.nodes;
    var dim = state.selected !== null;
    var drawn = 0, bucket = -1;
    for (var e = lowerBound(E.rel, state.threshold); e < E.n; e++) {
      var b = Math.min(BUCKETS - 1, Math.floor(Math.sqrt(E.rel[e]) * BUCKETS));
      if (b !== bucket) {
        if (bucket >= 0) { ctx.stroke(); }
        bucket = b;
        edgeStyle(b, t.k, dim);
        ctx.beginPath();
      }
      var src = nodes[E.s[e]], dst = nodes[E.t[e]];
      ctx.moveTo(t.x + t.k * src.x, t.y + t.k * src.ys[E.a[e]]);
      ctx.lineTo(t.x + t.k * dst.x, t.y + t.k * dst.ys[E.b[e]]);
      drawn++;
    }
    if (bucket >= 0) { ctx.stroke(); }
    return drawn;
  }

  // The selected feature's edges (above the threshold) on top of the dimmed rest.
  function drawHighlights(view) {
    var sel = state.selected;
    if (!sel) { return; }
    var E = view.edges, t = view.transform, nodes = view.nodes;
    E.incident[sel.ni][sel.fi].forEach(function (e) {
      if (E.rel[e] < state.threshold) { return; }
      var incoming = E.t[e] === sel.ni && E.b[e] === sel.fi;
      var src = nodes[E.s[e]], dst = nodes[E.t[e]];
      ctx.strokeStyle = incoming ? IN_COLOUR : OUT_COLOUR;
      ctx.globalAlpha = 0.35 + 0.6 * Math.sqrt(E.rel[e]);
      ctx.lineWidth = (0.8 + 2.8 * E.rel[e]) * Math.min(2, Math.sqrt(t.k));
      ctx.beginPath();
      ctx.moveTo(t.x + t.k * src.x, t.y + t.k * src.ys[E.a[e]]);
      ctx.lineTo(t.x + t.k * dst.x, t.y + t.k * dst.ys[E.b[e]]);
      ctx.stroke();
    });
    ctx.globalAlpha = 1;
  }

  // The selected feature and the features its shown edges reach, drawn at full strength.
  function neighbours(view) {
    var sel = state.selected, found = new Set();
    if (!sel) { return found; }
    var E = view.edges;
    found.add(sel.ni + ":" + sel.fi);
    E.incident[sel.ni][sel.fi].forEach(function (e) {
      if (E.rel[e] < state.threshold) { return; }
      found.add(E.s[e] + ":" + E.a[e]);
      found.add(E.t[e] + ":" + E.b[e]);
    });
    return found;
  }

  function drawDots(view) {
    var t = view.transform, near = neighbours(view), dimming = state.selected !== null;
    var paths = new Map();
    view.nodes.forEach(function (node, ni) {
      node.features.forEach(function (f, fi) {
        var faded = dimming && !near.has(ni + ":" + fi);
        var key = colourOf(f.module) + (faded ? "|f" : "");
        if (!paths.has(key)) { paths.set(key, new Path2D()); }
        var p = toScreen(t, node.x, node.ys[fi]), r = dotRadius(node, fi, t.k);
        var path = paths.get(key);
        path.moveTo(p.x + r, p.y);
        path.arc(p.x, p.y, r, 0, 2 * Math.PI);
      });
    });
    ctx.lineWidth = 0.8;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
    paths.forEach(function (path, key) {
      ctx.globalAlpha = key.slice(-2) === "|f" ? 0.3 : 1;
      ctx.fillStyle = key.split("|")[0];
      ctx.fill(path);
      ctx.stroke(path);
    });
    ctx.globalAlpha = 1;
    ringAround(view, state.selected, "#111827", 2.2);
    ringAround(view, state.hover, "#4b5563", 1.2);
  }

  function ringAround(view, at, colour, width) {
    if (!at || at.vi !== view.vi) { return; }
    var node = view.nodes[at.ni], t = view.transform;
    var p = toScreen(t, node.x, node.ys[at.fi]);
    ctx.beginPath();
    ctx.arc(p.x, p.y, dotRadius(node, at.fi, t.k) + 2.5, 0, 2 * Math.PI);
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.stroke();
  }

  function ellipsize(text, width) {
    if (ctx.measureText(text).width <= width) { return text; }
    var cut = text;
    while (cut.length > 1 && ctx.measureText(cut + "\u2026").width > width) {
      cut = cut.slice(0, -1);
    }
    return cut + "\u2026";
  }

  function drawLabels(view) {
    var t = view.transform, n = view.nodes.length;
    var room = n > 1 ? Math.max(60, (t.k * (size.w - 2 * clamp(size.w * 0.09, 36, 110))) / (n - 1) - 8) : size.w;
    ctx.fillStyle = "rgba(255, 255, 255, 0.88)";
    ctx.fillRect(0, 0, size.w, LABEL_BAND - 8);
    ctx.textAlign = "center";
    ctx.textBaseline = "alphabetic";
    view.nodes.forEach(function (node) {
      var x = t.x + t.k * node.x;
      ctx.font = "600 12px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
      ctx.fillStyle = "#1f2937";
      ctx.fillText(ellipsize(node.name, room), x, 16);
      ctx.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
      ctx.fillStyle = "#6b7280";
      ctx.fillText(node.features.length + " of " + node.spec.n_kept + " shown", x, 30);
    });
    if (view.edges.n === 0) {
      ctx.fillStyle = "#6b7280";
      ctx.font = "13px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
      ctx.fillText("No interaction edges in this view", size.w / 2, size.h - 12);
    }
  }

  // The dot under a point of the canvas (CSS px), nearest first, within its radius + 4 px.
  function hitTest(px, py) {
    var view = current(), t = view.transform, best = null, bestD = Infinity;
    view.nodes.forEach(function (node, ni) {
      var sx = t.x + t.k * node.x;
      if (Math.abs(sx - px) > 40 * Math.sqrt(t.k) + 20) { return; }
      for (var fi = 0; fi < node.features.length; fi++) {
        var dx = sx - px, dy = t.y + t.k * node.ys[fi] - py;
        var d = Math.sqrt(dx * dx + dy * dy);
        if (d <= dotRadius(node, fi, t.k) + 4 && d < bestD) {
          bestD = d;
          best = { vi: view.vi, ni: ni, fi: fi };
        }
      }
    });
    return best;
  }

  function local(event) {
    var rect = canvas.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  function zoomAt(px, py, factor) {
    var t = current().transform;
    var k = clamp(t.k * factor, 0.25, 80);
    t.x = px - ((px - t.x) * k) / t.k;
    t.y = py - ((py - t.y) * k) / t.k;
    t.k = k;
    requestDraw();
  }

  function showTip(hit, px, py) {
    if (!hit) { tip.hidden = true; return; }
    var node = current().nodes[hit.ni], f = node.features[hit.fi];
    tip.textContent = "";
    tip.appendChild(el("strong", null, node.name + " \u00b7 #" + f.index));
    tip.appendChild(el("span", null, "\u039b " + fmt(f.lambda) + " (" + percent(f.share) + ")" +
      (f.module === null || f.module === undefined ? "" : " \u00b7 module " + f.module)));
    tip.hidden = false;
    var x = Math.min(px + 14, size.w - tip.offsetWidth - 4);
    tip.style.left = Math.max(4, x) + "px";
    tip.style.top = Math.max(4, py + 14) + "px";
  }

  function sameHit(p, q) {
    return (p === null && q === null) ||
      (p !== null && q !== null && p.ni === q.ni && p.fi === q.fi && p.vi === q.vi);
  }

  function bindCanvas() {
    var drag = null;
    canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      var p = local(event);
      var unit = event.deltaMode === 1 ? 0.05 : event.deltaMode === 2 ? 1 : 0.0015;
      zoomAt(p.x, p.y, Math.exp(-event.deltaY * unit));
    }, { passive: false });
    canvas.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) { return; }
      var t = current().transform;
      drag = { x: event.clientX, y: event.clientY, tx: t.x, ty: t.y, moved: false };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", function (event) {
      var p = local(event);
      if (drag) {
        var dx = event.clientX - drag.x, dy = event.clientY - drag.y;
        if (drag.moved || dx * dx + dy * dy > 9) {
          drag.moved = true;
          var t = current().transform;
          t.x = drag.tx + dx;
          t.y = drag.ty + dy;
          canvas.classList.add("dragging");
          tip.hidden = true;
          requestDraw();
        }
        return;
      }
      var hit = hitTest(p.x, p.y);
      canvas.classList.toggle("over-dot", hit !== null);
      showTip(hit, p.x, p.y);
      if (!sameHit(hit, state.hover)) { state.hover = hit; requestDraw(); }
    });
    canvas.addEventListener("pointerup", function (event) {
      if (!drag) { return; }
      var moved = drag.moved;
      drag = null;
      canvas.classList.remove("dragging");
      if (moved) { return; }
      var p = local(event), hit = hitTest(p.x, p.y);
      if (hit) { selectFeature(hit.vi, hit.ni, hit.fi, true); } else { clearSelection(); }
    });
    canvas.addEventListener("pointercancel", function () { drag = null; });
    canvas.addEventListener("pointerleave", function () {
      tip.hidden = true;
      if (state.hover) { state.hover = null; requestDraw(); }
    });
    canvas.addEventListener("keydown", onCanvasKey);
  }

  function onCanvasKey(event) {
    var keys = { "+": 1.25, "=": 1.25, "-": 0.8 };
    if (keys[event.key]) {
      zoomAt(size.w / 2, size.h / 2, keys[event.key]);
    } else if (event.key === "Escape") {
      clearSelection();
    } else {
      return;
    }
    event.preventDefault();
  }

  /* -------------------------------------------------------- feature cards */

  var observer = null, cardsPanel = null;

  function cardStats(view, node, f) {
    var parts = ["\u039b " + fmt(f.lambda), percent(clamp(Number(f.share) || 0, 0, 1))];
    if (f.module !== null && f.module !== undefined) { parts.push("module " + f.module); }
    if (f.ablation !== null && f.ablation !== undefined) {
      var metric = view.spec.ablation ? view.spec.ablation.metric : "score";
      parts.push("\u0394" + metric + " " + signed(f.ablation));
    }
    return parts.join(" \u00b7 ");
  }

  function buildCard(view, ni, fi) {
    var node = view.nodes[ni], f = node.features[fi];
    var card = el("section", "feature-card");
    card.id = cardId(view.vi, ni, f.index);
    card.dataset.view = view.name;
    card.dataset.node = node.name;
    card.dataset.index = String(f.index);
    card.libAt = { vi: view.vi, ni: ni, fi: fi };
    var head = el("header", "card-head");
    var title = el("h3", "card-title");
    var toggle = el("button", "card-toggle");
    toggle.type = "button";
    var swatch = el("span", "swatch");
    swatch.style.backgroundColor = colourOf(f.module);
    toggle.appendChild(swatch);
    toggle.appendChild(el("span", "card-name", node.name + " \u00b7 #" + f.index));
    toggle.appendChild(el("span", "chevron"));
    title.appendChild(toggle);
    head.appendChild(title);
    head.appendChild(el("div", "card-stats", cardStats(view, node, f)));
    var body = el("div", "card-body");
    body.style.minHeight = estimatedHeight(f) + "px";
    card.appendChild(head);
    card.appendChild(body);
    setExpanded(card, true);
    return card;
  }

  // A placeholder's height, close to the rendered body's, so lazy rendering moves little.
  function estimatedHeight(f) {
    var n = (f.examples || []).length;
    var per = kind === "tokens" ? 27 : kind === "image" ? 0 : 22;
    var images = kind === "image" ? 96 * Math.ceil(n / 5) : 0;
    return 150 + per * n + images;
  }

  function setExpanded(card, open) {
    card.classList.toggle("expanded", open);
    card.querySelector(".card-toggle").setAttribute("aria-expanded", open ? "true" : "false");
    card.querySelector(".card-body").hidden = !open;
  }

  function buildCards(view) {
    var box = el("div", "view-cards");
    box.dataset.view = view.name;
    var summary = [];
    if (typeof view.spec.modularity === "number") {
      summary.push("modularity " + fmt(view.spec.modularity));
    }
    if (view.spec.ablation) {
      summary.push(view.spec.ablation.metric + " baseline " + fmt(view.spec.ablation.baseline));
    }
    summary.push(String(view.spec.basis || "") + " basis");
    box.appendChild(el("p", "view-summary", view.name + ": " + summary.join(" \u00b7 ")));
    view.nodes.forEach(function (node, ni) {
      var group = el("div", "node-group");
      var heading = el("h2", "node-heading", node.name);
      heading.appendChild(el("span", "node-meta",
        count(node.spec.n_kept) + " kept \u00b7 " + node.features.length + " shown \u00b7 \u03a3\u039b " +
        fmt(node.spec.total_lambda)));
      group.appendChild(heading);
      view.cards[ni] = node.features.map(function (f, fi) {
        var card = buildCard(view, ni, fi);
        group.appendChild(card);
        if (observer) { observer.observe(card); }
        return card;
      });
      box.appendChild(group);
    });
    view.container = box;
    return box;
  }

  function buildCardsPanel() {
    var panel = el("section", "cards-panel");
    cardsPanel = panel;
    panel.setAttribute("aria-label", "Feature cards");
    var bar = el("div", "cards-toolbar");
    var all = el("button", "toggle-all", "Collapse all");
    all.type = "button";
    all.addEventListener("click", function () {
      var open = all.textContent !== "Collapse all";
      current().cards.forEach(function (cards) {
        cards.forEach(function (card) { setExpanded(card, open); });
      });
      all.textContent = open ? "Collapse all" : "Expand all";
    });
    bar.appendChild(el("span", "cards-hint", "Examples are drawn as cards come into view."));
    bar.appendChild(all);
    panel.appendChild(bar);
    if ("IntersectionObserver" in window) {
      observer = new IntersectionObserver(onVisible, { rootMargin: "400px 0px" });
    }
    views.forEach(function (view) { panel.appendChild(buildCards(view)); });
    panel.addEventListener("click", onCardsClick);
    return panel;
  }

  function onVisible(entries) {
    var due = entries.filter(function (entry) {
      return entry.isIntersecting && entry.target.classList.contains("expanded") &&
        !entry.target.libRendered;
    });
    if (!due.length) { return; }
    // Cards drawn above the one in sight would push it away: keep it where it is
    // (the browser's own scroll anchoring does not hold it in a nested scroller).
    var anchor = firstCardInSight(), before = anchor ? anchor.getBoundingClientRect().top : 0;
    due.forEach(function (entry) { renderBody(entry.target); });
    if (!anchor) { return; }
    var shift = anchor.getBoundingClientRect().top - before;
    if (Math.abs(shift) < 0.5) { return; }
    if (cardsPanel.scrollHeight > cardsPanel.clientHeight + 1 &&
        getComputedStyle(cardsPanel).overflowY !== "visible") {
      cardsPanel.scrollTop += shift;
    } else {
      window.scrollBy(0, shift);
    }
  }

  // The selected card when in sight, else the first card of the view in sight.
  function firstCardInSight() {
    var top = Math.max(0, cardsPanel.getBoundingClientRect().top), bottom = window.innerHeight;
    var inSight = function (card) {
      var rect = card.getBoundingClientRect();
      return rect.bottom > top && rect.top < bottom;
    };
    if (selectedCard && inSight(selectedCard)) { return selectedCard; }
    var cards = [].concat.apply([], current().cards);
    for (var i = 0; i < cards.length; i++) {
      if (inSight(cards[i])) { return cards[i]; }
    }
    return null;
  }

  function onCardsClick(event) {
    var link = event.target.closest("a.edge-link");
    if (link) {
      event.preventDefault();
      var view = current(), at = findFeature(view, link.dataset.node, link.dataset.index);
      if (at) { selectFeature(view.vi, at.ni, at.fi, true); }
      return;
    }
    var head = event.target.closest(".card-head");
    if (!head) { return; }
    var card = head.parentNode, at2 = card.libAt, sel = state.selected;
    if (sel && sel.vi === at2.vi && sel.ni === at2.ni && sel.fi === at2.fi) {
      setExpanded(card, !card.classList.contains("expanded"));
      if (card.classList.contains("expanded")) { renderBody(card); }
    } else {
      selectFeature(at2.vi, at2.ni, at2.fi, false);
    }
  }

  /* ------------------------------------------------- a card's lazy body */

  function renderBody(card) {
    if (card.libRendered) { return; }
    card.libRendered = true;
    var at = card.libAt, view = views[at.vi], node = view.nodes[at.ni];
    var f = node.features[at.fi], body = card.querySelector(".card-body");
    body.style.minHeight = "";
    var top = el("div", "card-top");
    top.appendChild(histogram(f));
    top.appendChild(facts(view, node, f));
    var links = el("div", "edge-lists");
    links.appendChild(edgeList(view, "Incoming", f.incoming || []));
    links.appendChild(edgeList(view, "Outgoing", f.outgoing || []));
    top.appendChild(links);
    body.appendChild(top);
    body.appendChild(examples(view, node, f));
  }

  function facts(view, node, f) {
    var list = el("dl", "card-facts");
    var add = function (name, value) {
      list.appendChild(el("dt", null, name));
      list.appendChild(el("dd", null, value));
    };
    add("\u039b", fmt(f.lambda) + " of " + fmt(node.spec.total_lambda));
    add("Share", percent(clamp(Number(f.share) || 0, 0, 1)));
    add("Rank", "#" + f.index + " of " + count(node.spec.n_kept) + " kept");
    add("Module", f.module === null || f.module === undefined ? "none" : String(f.module));
    if (f.ablation !== null && f.ablation !== undefined) {
      var ablation = view.spec.ablation;
      add("Ablated", (ablation ? ablation.metric + " " : "") + signed(f.ablation) +
        (ablation ? " (baseline " + fmt(ablation.baseline) + ")" : ""));
    }
    return list;
  }

  function histogram(f) {
    var box = el("figure", "histogram");
    var h = f.histogram || { edges: [], counts: [] };
    var counts = h.counts || [], edges = h.edges || [];
    var c = el("canvas", "hist-canvas");
    var w = 220, height = 56, dpr = window.devicePixelRatio || 1;
    c.width = w * dpr; c.height = height * dpr;
    c.style.width = w + "px"; c.style.height = height + "px";
    var g = c.getContext("2d");
    g.scale(dpr, dpr);
    var most = 0;
    counts.forEach(function (n) { most = Math.max(most, n); });
    var bar = w / Math.max(counts.length, 1);
    g.fillStyle = colourOf(f.module);
    counts.forEach(function (n, i) {
      // log(1 + count): a spike at zero would flatten every other bar on a linear scale.
      var bh = most > 0 ? ((height - 2) * Math.log1p(n)) / Math.log1p(most) : 0;
      g.fillRect(i * bar + 0.5, height - bh, Math.max(bar - 1, 0.5), bh);
    });
    g.fillStyle = "#9ca3af";
    g.fillRect(0, height - 1, w, 1);
    c.setAttribute("aria-label", "Histogram of the feature's values (log count)");
    box.appendChild(c);
    var axis = el("figcaption", "hist-axis");
    axis.appendChild(el("span", null, fmt(edges[0])));
    axis.appendChild(el("span", "hist-name", "values (log count)"));
    axis.appendChild(el("span", null, fmt(edges[edges.length - 1])));
    box.appendChild(axis);
    return box;
  }

  function edgeList(view, label, entries) {
    var box = el("div", "edge-list");
    var heading = box.appendChild(el("h4", null, label));
    if (!entries.length) { box.appendChild(el("p", "none", "none")); return box; }
    var most = 0, nodes = new Set();
    entries.forEach(function (entry) {
      most = Math.max(most, Math.abs(entry[2]));
      nodes.add(String(entry[0]));
    });
    // One node for all (the usual case): named once in the heading, the links are "#index".
    var one = nodes.size === 1;
    if (one) { heading.appendChild(el("span", "edge-node", String(entries[0][0]))); }
    var list = el("ul");
    entries.forEach(function (entry) {
      var item = el("li"), at = findFeature(view, entry[0], entry[1]);
      var name = (one ? "" : String(entry[0]) + " \u00b7 ") + "#" + entry[1];
      var target;
      if (at) {
        target = el("a", "edge-link", name);
        target.href = "#" + cardId(view.vi, at.ni, entry[1]);
        target.dataset.node = String(entry[0]);
        target.dataset.index = String(entry[1]);
        target.title = String(entry[0]) + " \u00b7 #" + entry[1];
      } else {
        target = el("span", "edge-missing", name);
        target.title = String(entry[0]) + " \u00b7 #" + entry[1] + ": not shown on this page";
      }
      var meter = el("span", "edge-meter");
      var fill = el("span", "edge-fill");
      fill.style.width = (most > 0 ? (100 * Math.abs(entry[2])) / most : 0).toFixed(1) + "%";
      meter.appendChild(fill);
      item.appendChild(target);
      item.appendChild(meter);
      item.appendChild(el("span", "edge-weight", fmt(entry[2])));
      list.appendChild(item);
    });
    box.appendChild(list);
    return box;
  }

  function examples(view, node, f) {
    var box = el("div", "examples examples-" + kind);
    var list = f.examples || [];
    var heading = box.appendChild(el("h4", null, "Top examples (" + list.length + ")"));
    if (kind !== "image" && list.length) {
      heading.appendChild(el("span", "legend positive", "positive"));
      heading.appendChild(el("span", "legend negative", "negative"));
    }
    if (!list.length) { box.appendChild(el("p", "none", "none")); return box; }
    if (kind === "tokens") {
      list.forEach(function (ex) { box.appendChild(tokenExample(ex)); });
    } else if (kind === "image") {
      var grid = el("div", "image-grid");
      list.forEach(function (ex) { grid.appendChild(imageExample(ex, node)); });
      box.appendChild(grid);
    } else {
      box.appendChild(tabularExamples(list));
    }
    return box;
  }

  function where(ex) {
    var text = "sample " + ex.sample;
    if (ex.position && ex.position.length) { text += " @ " + ex.position.join(","); }
    return text;
  }

  function shownToken(text) {
    if (text === undefined || text === null) { return "\ufffd"; }
    return String(text).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5") || "\u2205";
  }

  function tokenExample(ex) {
    var row = el("div", "example token-example");
    var meta = el("div", "example-meta");
    meta.appendChild(el("span", "example-value", fmt(ex.value)));
    meta.appendChild(el("span", "example-where", where(ex)));
    row.appendChild(meta);
    var line = el("div", "tokens");
    var values = ex.context_values || [], strings = data.input.token_strings;
    var most = 0;
    values.forEach(function (v) { most = Math.max(most, Math.abs(v)); });
    (ex.context || []).forEach(function (id, i) {
      var v = Number(values[i]) || 0;
      var span = el("span", i === ex.focus ? "tok focus" : "tok", shownToken(strings[id]));
      var a = most > 0 ? (0.8 * Math.abs(v)) / most : 0;
      span.style.backgroundColor = v >= 0 ?
        "rgba(234, 88, 12, " + a.toFixed(3) + ")" : "rgba(37, 99, 235, " + a.toFixed(3) + ")";
      span.title = JSON.stringify(String(strings[id])) + ": " + fmt(v);
      line.appendChild(span);
    });
    row.appendChild(line);
    return row;
  }

  function decodePixels(text, w, h, c, image) {
    var bytes = window.atob(text || ""), out = image.data;
    for (var p = 0; p < w * h; p++) {
      var i = p * c;
      out[4 * p] = bytes.charCodeAt(i);
      out[4 * p + 1] = bytes.charCodeAt(c === 3 ? i + 1 : i);
      out[4 * p + 2] = bytes.charCodeAt(c === 3 ? i + 2 : i);
      out[4 * p + 3] = i < bytes.length ? 255 : 0;
    }
  }

  function imageExample(ex, node) {
    var shape = data.input.image_shape, h = shape[0], w = shape[1], c = shape[2];
    var tile = el("figure", "example image-example");
    var frame = el("div", "image-frame");
    var pic = el("canvas", "image-tile");
    pic.width = w;
    pic.height = h;
    // Whole pixels: a 28-pixel digit at 2x, a 224-pixel photo shrunk to fit.
    var scale = Math.max(w, h) <= 80 ? Math.max(1, Math.floor(80 / Math.max(w, h))) : 80 / Math.max(w, h);
    pic.style.width = Math.round(w * scale) + "px";
    pic.style.height = Math.round(h * scale) + "px";
    var g = pic.getContext("2d"), image = g.createImageData(w, h);
    decodePixels(ex.pixels, w, h, c, image);
    g.putImageData(image, 0, 0);
    frame.appendChild(pic);
    var grid = node.spec.positions_shape || [];
    if (grid.length === 2 && ex.position && ex.position.length === 2) {
      var box = el("div", "loc-box");
      box.style.left = (100 * ex.position[1] / grid[1]) + "%";
      box.style.top = (100 * ex.position[0] / grid[0]) + "%";
      box.style.width = (100 / grid[1]) + "%";
      box.style.height = (100 / grid[0]) + "%";
      frame.appendChild(box);
    }
    tile.appendChild(frame);
    tile.appendChild(el("figcaption", null, fmt(ex.value) + " \u00b7 " + where(ex)));
    return tile;
  }

  function tabularExamples(list) {
    var columns = data.input.columns.slice(0, EXAMPLE_COLUMNS);
    var wrap = el("div", "table-wrap");
    var table = el("table", "tabular-examples");
    var head = el("tr");
    ["value", "sample"].concat(columns).forEach(function (name) {
      var th = el("th", null, name);
      th.title = String(name);
      head.appendChild(th);
    });
    table.appendChild(el("thead")).appendChild(head);
    var scale = columns.map(function (_, j) {
      var most = 0;
      list.forEach(function (ex) { most = Math.max(most, Math.abs(Number((ex.row || [])[j]) || 0)); });
      return most;
    });
    var body = table.appendChild(el("tbody"));
    list.forEach(function (ex) {
      var tr = el("tr");
      tr.appendChild(el("td", "example-value", fmt(ex.value)));
      tr.appendChild(el("td", "example-where", ex.sample));
      columns.forEach(function (_, j) {
        var v = Number((ex.row || [])[j]) || 0, td = el("td", null, fmt(v));
        var a = scale[j] > 0 ? (0.45 * Math.abs(v)) / scale[j] : 0;
        td.style.backgroundColor = (v >= 0 ? "rgba(234, 88, 12, " : "rgba(37, 99, 235, ") + a.toFixed(3) + ")";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    wrap.appendChild(table);
    if (data.input.columns.length > columns.length) {
      wrap.appendChild(el("p", "table-note",
        "first " + columns.length + " of " + data.input.columns.length + " columns"));
    }
    return wrap;
  }

  /* ------------------------------------------------- selection and views */

  var selectedCard = null;

  function selectFeature(vi, ni, fi, scroll) {
    if (vi !== state.view) { setView(vi); }
    var view = views[vi], card = view.cards[ni][fi];
    state.selected = { vi: vi, ni: ni, fi: fi };
    if (selectedCard) { selectedCard.classList.remove("selected"); }
    selectedCard = card;
    card.classList.add("selected");
    setExpanded(card, true);
    renderBody(card);
    if (scroll) { card.scrollIntoView({ block: "start", behavior: "auto" }); }
    showSelection(view);
    requestDraw();
  }

  function clearSelection() {
    if (selectedCard) { selectedCard.classList.remove("selected"); }
    selectedCard = null;
    state.selected = null;
    showSelection(current());
    requestDraw();
  }

  function showSelection(view) {
    selectionInfo.textContent = "";
    var sel = state.selected;
    if (!sel) {
      selectionInfo.appendChild(el("span", "muted", "Click a dot to select a feature."));
      return;
    }
    var node = view.nodes[sel.ni], f = node.features[sel.fi], E = view.edges;
    var incident = E.incident[sel.ni][sel.fi];
    var into = incident.filter(function (e) { return E.t[e] === sel.ni && E.b[e] === sel.fi; });
    selectionInfo.appendChild(el("strong", null, node.name + " \u00b7 #" + f.index));
    selectionInfo.appendChild(el("span", "in-key", into.length + " in"));
    selectionInfo.appendChild(el("span", "out-key", (incident.length - into.length) + " out"));
    var clear = el("button", "clear-selection", "Clear");
    clear.type = "button";
    clear.addEventListener("click", clearSelection);
    selectionInfo.appendChild(clear);
  }

  function setView(vi) {
    if (selectedCard) { selectedCard.classList.remove("selected"); }
    selectedCard = null;
    state.selected = null;
    state.hover = null;
    state.view = vi;
    views.forEach(function (view) {
      view.container.hidden = view.vi !== vi;
      if (view.tab) {
        view.tab.setAttribute("aria-selected", view.vi === vi ? "true" : "false");
        view.tab.classList.toggle("active", view.vi === vi);
      }
    });
    updateEdgeCount();
    showSelection(views[vi]);
    requestDraw();
  }

  /* ------------------------------------------------------------ test API */

  function viewNamed(name) {
    for (var i = 0; i < views.length; i++) {
      if (views[i].name === String(name)) { return views[i]; }
    }
    return null;
  }

  api.drawnEdges = function () { return state.drawn; };
  api.totalEdges = function () { return current().edges.n; };
  api.transform = function () {
    var t = current().transform;
    return { k: t.k, x: t.x, y: t.y };
  };
  api.selected = function () {
    var sel = state.selected;
    if (!sel) { return null; }
    var view = views[sel.vi], node = view.nodes[sel.ni];
    return { view: view.name, node: node.name, index: node.features[sel.fi].index };
  };
  api.select = function (viewName, nodeName, index) {
    var view = viewNamed(viewName), at = view && findFeature(view, nodeName, index);
    if (!at) { return false; }
    selectFeature(view.vi, at.ni, at.fi, true);
    return true;
  };
  api.setView = function (name) {
    var view = viewNamed(name);
    if (!view) { return false; }
    setView(view.vi);
    return true;
  };
  api.nodeScreenPosition = function (nodeName, index) {
    var view = current(), at = findFeature(view, nodeName, index);
    if (!at) { return null; }
    if (view.laidOut !== size.w + "x" + size.h) { layout(view); }
    var node = view.nodes[at.ni], rect = canvas.getBoundingClientRect();
    var p = toScreen(view.transform, node.x, node.ys[at.fi]);
    return { x: rect.left + p.x, y: rect.top + p.y };
  };

  /* --------------------------------------------------------------- start */

  function start() {
    root.appendChild(buildHeader());
    var main = el("main", "dash-main");
    main.appendChild(buildGraphPanel());
    main.appendChild(buildCardsPanel());
    root.appendChild(main);
    bindCanvas();
    document.title = String(data.title);
    setView(0);
    var t0 = performance.now();
    resize();
    layout(current());
    draw();
    api.renderMs = performance.now() - t0;
    if ("ResizeObserver" in window) {
      new ResizeObserver(function () { if (resize()) { requestDraw(); } }).observe(canvasWrap);
    }
    window.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && state.selected) { clearSelection(); }
    });
    api.loadMs = performance.now();
    api.ready = true;
    root.classList.add("ready");
  }

  try {
    start();
  } catch (error) {
    api.error = String(error && error.message ? error.message : error);
    var message = el("p", "dash-error", "The dashboard failed to start: " + api.error);
    root.insertBefore(message, root.firstChild);
    throw error;
  }
})();
