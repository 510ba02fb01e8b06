// dlba admin dashboard: fetches /api/status every few seconds and updates the page in
// place.  Elements are made once per entity (keyed by back-end number, pool name, node
// number) and only their text and sizes change, so the page never flickers or reloads.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const NUMBER = new Intl.NumberFormat("en-US");
  // Node colours, shared by the nodes table and the client-table picture.
  const PALETTE = ["#4c8dff", "#2fbf86", "#f0a53a", "#b67cf0", "#f06a9b",
                   "#36c2d1", "#f27b4b", "#8fc24a", "#7d8cf5", "#d4a84e"];
  const UNASSIGNED = "#8a93a380";
  const MIN_SPAN = 20; // samples: the narrowest time a sparkline's width stands for

  const state = { refresh: 2, timer: null, lastOk: null, inFlight: false, tableVersion: null, times: [] };

  // ---------------------------------------------------------------- small helpers
  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function setTitle(node, text) {
    if (node.title !== text) node.title = text;
  }

  function field(root, name) { return root.querySelector('[data-field="' + name + '"]'); }

  function last(values) {
    if (!values) return null;
    for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
    return null;
  }

  function colour(node) {
    const n = Number(node);
    return n > 0 ? PALETTE[(n - 1) % PALETTE.length] : UNASSIGNED;
  }

  // ---------------------------------------------------------------- formats
  function count(v) { return v === null || v === undefined ? "–" : NUMBER.format(v); }

  function rate(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 10000) return (v / 1000).toFixed(0) + "k/s";
    if (v >= 1000) return (v / 1000).toFixed(1) + "k/s";
    if (v >= 100) return v.toFixed(0) + "/s";
    if (v >= 10) return v.toFixed(1) + "/s";
    return v.toFixed(2) + "/s";
  }

  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s === 0) return "0 ms";
    if (s < 0.01) return (s * 1000).toFixed(2) + " ms";
    if (s < 0.1) return (s * 1000).toFixed(1) + " ms";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 60) return s.toFixed(2) + " s";
    return span(s);
  }

  function span(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
    const m = Math.floor(s % 3600 / 60), sec = s % 60;
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + sec + " s";
    return sec + " s";
  }

  function age(s) {
    if (s === null || s === undefined) return "never";
    if (s < 60) return s.toFixed(1) + " s ago";
    return span(s) + " ago";
  }

  function percent(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%"; }

  function backendState(b) {
    if (!b.enabled) return "disabled";
    if (b.failed) return "failed";
    if (b.draining) return "draining";
    return "up";
  }

  function nodeState(n) {
    if (!n.enabled) return "disabled";
    return n.failed ? "failed" : "up";
  }

  // ---------------------------------------------------------------- sparklines
  // An inline SVG of one series, right-aligned on the history window so a young
  // history grows in from the right; nulls are gaps, not zeros.
  function sparkline(extra) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark" + (extra ? " " + extra : ""));
    svg.setAttribute("viewBox", "0 0 100 30");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    const base = document.createElementNS(SVG, "line");
    base.setAttribute("class", "base");
    base.setAttribute("x1", "0"); base.setAttribute("x2", "100");
    base.setAttribute("y1", "29.5"); base.setAttribute("y2", "29.5");
    const area = document.createElementNS(SVG, "path");
    area.setAttribute("class", "area");
    const line = document.createElementNS(SVG, "path");
    line.setAttribute("class", "line");
    const title = document.createElementNS(SVG, "title");
    svg.append(title, base, area, line);
    svg.parts = { area, line, title };
    return svg;
  }

  function drawSpark(svg, values, length, format) {
    values = values || [];
    const n = values.length;
    // The samples there are span the width once there are enough of them; a young
    // history starts at the right and grows leftwards, so its slope is not exaggerated.
    const window = Math.max(Math.min(length || n, Math.max(n, MIN_SPAN)), 2);
    let max = 0;
    for (const v of values) if (v !== null && v > max) max = v;
    const top = max > 0 ? max * 1.25 : 1;
    const x = (i) => 100 - (n - 1 - i) * (100 / (window - 1));
    const y = (v) => 29 - (v / top) * 27;
    let line = "", area = "", run = [];
    const flush = () => {
      if (!run.length) return;
      if (run.length === 1) run.push([run[0][0] + 0.8, run[0][1]]);
      line += "M" + run.map((p) => p[0].toFixed(2) + " " + p[1].toFixed(2)).join("L");
      area += "M" + run[0][0].toFixed(2) + " 30L" +
        run.map((p) => p[0].toFixed(2) + " " + p[1].toFixed(2)).join("L") +
        "L" + run[run.length - 1][0].toFixed(2) + " 30Z";
      run = [];
    };
    values.forEach((v, i) => { if (v === null) flush(); else run.push([x(i), y(v)]); });
    flush();
    // All zeros (no refusals, an empty queue): drawn quiet, not in the series' colour.
    svg.classList.toggle("flat", max === 0);
    if (svg.parts.line.getAttribute("d") !== line) {
      svg.parts.line.setAttribute("d", line);
      svg.parts.area.setAttribute("d", area);
    }
    const now = last(values);
    // Every series ends at the latest sample time: its first value is n samples back.
    const times = state.times;
    const first = times.length >= n && n > 1 ? times[times.length - n] : null;
    const period = first !== null ? " over the last " + span(times[times.length - 1] - first) : "";
    setText(svg.parts.title, "now " + format(now) + " · peak " + format(now === null && !max ? null : max) + period);
  }

  // ---------------------------------------------------------------- keyed lists
  // Keeps one element per item, in the items' order: made once, updated every time.
  function sync(container, items, keyOf, make, update) {
    const old = new Map();
    for (const child of Array.from(container.children)) old.set(child.dataset.key, child);
    let previous = null;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = old.get(key);
      if (node) old.delete(key);
      else { node = make(item); node.dataset.key = key; }
      update(node, item);
      const wanted = previous ? previous.nextSibling : container.firstChild;
      if (node !== wanted) container.insertBefore(node, wanted);
      previous = node;
    }
    for (const node of old.values()) node.remove();
  }

  function cell(tr, name, cls) {
    const td = el("td", cls);
    td.dataset.field = name;
    tr.appendChild(td);
    return td;
  }

  function sparkCell(tr, name, extra) {
    const td = el("td", "n");
    const wrap = el("span", "with-spark");
    const svg = sparkline(extra);
    const v = el("span", "v");
    v.dataset.field = name;
    wrap.append(svg, v);
    td.appendChild(wrap);
    tr.appendChild(td);
    return { svg, v };
  }

  function meterCell(tr, name) {
    const td = el("td", "n");
    const wrap = el("span", "meter");
    const bar = el("span", "bar");
    const fill = el("span", "fill");
    bar.appendChild(fill);
    const v = el("span", "v");
    v.dataset.field = name;
    wrap.append(bar, v);
    td.appendChild(wrap);
    tr.appendChild(td);
    return { fill, v, bar };
  }

  function setMeter(m, value, limit) {
    const share = limit > 0 ? Math.min(1, (value || 0) / limit) : 0;
    m.fill.style.width = (share * 100).toFixed(1) + "%";
    m.fill.classList.toggle("warn", share >= 0.75 && share < 1);
    m.fill.classList.toggle("alarm", share >= 1);
    setTitle(m.bar, count(value) + " of " + count(limit));
  }

  function stateBadge(td, word) {
    let badge = td.firstChild;
    if (!badge) { badge = el("span"); td.appendChild(badge); }
    const cls = "state " + word;
    if (badge.className !== cls) badge.className = cls;
    setText(badge, word);
  }

  function setRowState(tr, word) {
    for (const s of ["up", "draining", "failed", "disabled"]) tr.classList.toggle("is-" + s, s === word);
  }

  // ---------------------------------------------------------------- header and tiles
  function renderHeader(r) {
    const node = r.node || {};
    const role = node.role || "–";
    setText($("who"), "node " + count(node.number));
    setText($("role"), role);
    $("role").classList.toggle("scheduler", role === "scheduler");
    setText($("term"), node.term !== undefined ? "term " + node.term : "");
    setText($("version"), "dlba " + (node.version || "") + " · up " + span(node.uptime));
    const title = "dlba · node " + count(node.number) + " · " + role;
    if (document.title !== title) document.title = title;

    const array = r.array || {};
    const sweep = $("sweep");
    const settings = r.dashboard || {};
    let cls = "pill", text;
    if (array.sweep_age === null || array.sweep_age === undefined) {
      text = array.sweeping ? "no sweep yet" : "not sweeping";
      if (array.sweeping) cls += " warn";
    } else {
      text = "sweep " + age(array.sweep_age);
      if (array.sweep_age >= (settings.sweep_alarm || 15)) cls += " alarm";
      else if (array.sweep_age >= (settings.sweep_warn || 6)) cls += " warn";
      else cls += " ok";
    }
    setText(sweep, text);
    if (sweep.className !== cls) sweep.className = cls;
  }

  const tileSparks = {};

  function tileSpark(id, extra) {
    if (!tileSparks[id]) {
      tileSparks[id] = sparkline(extra);
      $(id).querySelector(".spark-slot").appendChild(tileSparks[id]);
    }
    return tileSparks[id];
  }

  function renderTiles(r, h) {
    const node = r.node || {};
    const nh = h.node || {};
    const tRate = $("tile-rate");
    setText(field(tRate, "rate"), rate(last(nh.rate)));
    setText(field(tRate, "hits"), count(node.hits) + " requests since start");
    drawSpark(tileSpark("tile-rate"), nh.rate, h.length, rate);

    const tOpen = $("tile-open");
    setText(field(tOpen, "open"), count(node.connections_open));
    setText(field(tOpen, "total"), count(node.connections_total) + " accepted");
    drawSpark(tileSpark("tile-open"), nh.open, h.length, count);

    const tResp = $("tile-response");
    setText(field(tResp, "response"), node.hits ? duration(node.avg_response_time) : "–");
    drawSpark(tileSpark("tile-response", "resp"), nh.response, h.length, duration);

    const backends = r.backends || [];
    const tBack = $("tile-backends");
    const live = backends.filter((b) => ["up", "draining"].includes(backendState(b))).length;
    setText(field(tBack, "up"), live + " / " + backends.length + " up");
    tBack.classList.toggle("bad", backends.length > 0 && live === 0);
    sync(field(tBack, "states"), backends, (b) => b.number,
      () => el("span", "chip"),
      (chip, b) => {
        const word = backendState(b);
        const cls = "chip " + word;
        if (chip.className !== cls) chip.className = cls;
        setTitle(chip, "back end " + b.number + " (" + b.address + "): " + word);
      });
    const pools = r.pools || [];
    setText(field(tBack, "pools"), pools.length + (pools.length === 1 ? " pool" : " pools"));

    const tRef = $("tile-refused");
    const refused = (node.connections_refused || 0) + (node.requests_rejected || 0);
    setText(field(tRef, "refused"), count(refused));
    setText(field(tRef, "detail"), count(node.requests_rejected) + " requests · " +
      count(node.connections_refused) + " connections");
    const poolRates = Object.values(h.pools || {}).map((p) => p.refused_rate || []);
    drawSpark(tileSpark("tile-refused", "bad"), sumSeries(poolRates), h.length, rate);
  }

  function sumSeries(list) {
    if (!list.length) return [];
    const n = Math.max(...list.map((s) => s.length));
    const out = [];
    for (let i = 0; i < n; i++) {
      let total = null;
      for (const s of list) {
        const v = s[i - (n - s.length)];
        if (v !== null && v !== undefined) total = (total || 0) + v;
      }
      out.push(total);
    }
    return out;
  }

  // ---------------------------------------------------------------- the array
  function makeNodeRow() {
    const tr = el("tr");
    const key = cell(tr, "number", "key");
    key.append(el("span", "swatch"), el("span", "num"), el("span", "me"), el("span", "crown"));
    cell(tr, "address").append(el("span", "ip"), el("span", "mac"));
    cell(tr, "state");
    cell(tr, "weight", "n");
    cell(tr, "buckets", "n");
    cell(tr, "open", "n");
    tr.spark = sparkCell(tr, "rate");
    cell(tr, "hits", "n");
    cell(tr, "response", "n");
    cell(tr, "last_seen", "n");
    cell(tr, "last_error", "err");
    return tr;
  }

  function renderArray(r, h) {
    const array = r.array || {};
    const me = (r.node || {}).number;
    const nodes = array.nodes || [];
    const sweeps = array.sweeps !== undefined ? count(array.sweeps) + " sweeps" : "";
    setText($("array-sub"), nodes.length + (nodes.length === 1 ? " node" : " nodes") +
      (array.scheduler ? " · scheduler: node " + array.scheduler : " · no scheduler") +
      (sweeps ? " · " + sweeps : ""));
    $("nodes-empty").hidden = nodes.length > 0;
    sync($("nodes").tBodies[0], nodes, (n) => n.number, makeNodeRow, (tr, n) => {
      const key = field(tr, "number");
      key.querySelector(".swatch").style.background = colour(n.number);
      setText(key.querySelector(".num"), String(n.number));
      setText(key.querySelector(".me"), n.number === me ? "this node" : "");
      setText(key.querySelector(".crown"), n.number === array.scheduler ? "★ scheduler" : "");
      const address = field(tr, "address");
      setText(address.querySelector(".ip"), n.ip || "");
      setText(address.querySelector(".mac"), n.mac || "");
      const word = nodeState(n);
      stateBadge(field(tr, "state"), word);
      setRowState(tr, word);
      setText(field(tr, "weight"), count(n.weight));
      setText(field(tr, "buckets"), count(n.buckets));
      setText(field(tr, "open"), count(n.open_connections));
      const series = (h.nodes || {})[String(n.number)] || {};
      setText(tr.spark.v, rate(last(series.rate)));
      drawSpark(tr.spark.svg, series.rate, h.length, rate);
      setText(field(tr, "hits"), count(n.hits));
      setText(field(tr, "response"), n.hits ? duration(n.avg_response_time) : "–");
      const seen = n.last_seen === null || n.last_seen === undefined ? null : r.time - n.last_seen;
      setText(field(tr, "last_seen"), age(seen));
      setText(field(tr, "last_error"), n.last_error || "");
      setTitle(field(tr, "last_error"), n.last_error || "");
    });
    renderClientTable(array.client_table, nodes);
    const summary = array.summary || [];
    $("summary-box").hidden = summary.length === 0;
    sync($("summary").tBodies[0], summary, (s) => s.backend, () => {
      const tr = el("tr");
      cell(tr, "backend", "key"); cell(tr, "address"); cell(tr, "sessions", "n");
      cell(tr, "hits", "n"); cell(tr, "open", "n");
      return tr;
    }, (tr, s) => {
      setText(field(tr, "backend"), String(s.backend));
      setText(field(tr, "address"), s.address || "");
      setText(field(tr, "sessions"), count(s.sessions));
      setText(field(tr, "hits"), count(s.hits));
      setText(field(tr, "open"), count(s.open_connections));
    });
  }

  // The client table as a stacked bar (each node's share of the buckets, unassigned
  // hatched) and, when the owners are known, a map of every bucket, one pixel each.
  function renderClientTable(table, nodes) {
    const none = !table;
    $("no-client-table").hidden = !none;
    const bar = $("buckets-bar"), legend = $("buckets-legend"), map = $("bucket-map");
    bar.hidden = legend.hidden = none;
    if (none) { map.hidden = true; state.tableVersion = null; return; }
    const size = table.size || 0;
    const counts = Object.entries(table.buckets || {})
      .map(([node, n]) => ({ node: Number(node), n: n }))
      .filter((c) => c.node > 0 && c.n > 0)
      .sort((a, b) => a.node - b.node);
    const assigned = counts.reduce((t, c) => t + c.n, 0);
    sync(bar, counts, (c) => c.node, () => el("span", "seg"), (seg, c) => {
      seg.style.width = (size ? (c.n / size) * 100 : 0).toFixed(3) + "%";
      seg.style.background = colour(c.node);
      setTitle(seg, "node " + c.node + ": " + count(c.n) + " buckets");
    });
    const items = counts.map((c) => ({ key: c.node, label: "node " + c.node, n: c.n, colour: colour(c.node) }));
    items.push({ key: "free", label: "unassigned", n: Math.max(size - assigned, 0), colour: UNASSIGNED });
    items.push({ key: "meta", label: "version " + count(table.version) + " · " + count(size) + " buckets", n: null });
    sync(legend, items, (i) => i.key, () => {
      const item = el("span", "item");
      item.append(el("span", "swatch"), el("span", "label"), el("b"));
      return item;
    }, (item, i) => {
      const sw = item.querySelector(".swatch");
      sw.hidden = !i.colour;
      if (i.colour) sw.style.background = i.colour;
      setText(item.querySelector(".label"), i.label);
      setText(item.querySelector("b"), i.n === null ? "" : count(i.n) + " (" + percent(size ? i.n / size : 0) + ")");
    });
    const owners = Array.isArray(table.owners) ? table.owners : null;
    map.hidden = !owners || !owners.length;
    if (owners && owners.length && state.tableVersion !== table.version) {
      state.tableVersion = table.version;
      drawBucketMap(map, owners);
    }
  }

  function drawBucketMap(canvas, owners) {
    const n = owners.length;
    const cols = Math.ceil(Math.sqrt(n * 10)); // wide: the map sits under a wide bar
    const rows = Math.ceil(n / cols);
    canvas.width = cols;
    canvas.height = rows;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(cols, rows);
    const rgb = {};
    const toRgb = (hex) => [1, 3, 5, 7].map((i) => parseInt(hex.slice(i, i + 2) || "ff", 16));
    for (let i = 0; i < n; i++) {
      const owner = owners[i];
      const c = rgb[owner] || (rgb[owner] = toRgb(colour(owner)));
      image.data.set(c, i * 4);
    }
    ctx.putImageData(image, 0, 0);
    canvas.title = count(n) + " buckets, one pixel each, coloured by owning node";
  }

  // ---------------------------------------------------------------- pools
  function makePool(p) {
    const card = el("section", "card pool");
    card.dataset.pool = p.name;
    const head = el("div", "card-head");
    const h2 = el("h2", null, "Pool ");
    const name = el("span", "pool-name");
    h2.appendChild(name);
    const policy = el("span", "badge policy");
    const refusing = el("span", "pill alarm", "refusing new connections");
    head.append(h2, policy, refusing);
    card.appendChild(head);

    const stats = el("div", "pool-stats");
    card.parts = { name, policy, refusing, stats: {} };
    const stat = (key, label, spark) => {
      const box = el("div", "stat");
      const v = el("span", "v");
      const text = el("span");
      text.dataset.field = key;
      v.appendChild(text);
      let svg = null;
      if (spark) { svg = sparkline(spark === true ? "" : spark); v.appendChild(svg); }
      box.append(el("span", "k", label), v);
      stats.appendChild(box);
      card.parts.stats[key] = { box, text, svg };
    };
    stat("queued", "Queue", true);
    stat("oldest_wait", "Oldest wait");
    stat("queue_timeout", "Queue timeout");
    stat("refused_requests", "Refused requests", "bad");
    stat("refused_connections", "Refused connections");
    stat("expired", "Expired");
    stat("sessions", "Sessions", true);
    stat("hit_rate", "Session hit rate");
    card.appendChild(stats);

    const wrap = el("div", "table-wrap");
    const table = el("table", "grid backends");
    const headRow = el("tr");
    for (const [label, n] of [["Back end", 0], ["Address", 0], ["State", 0], ["Open", 1],
      ["Queued", 1], ["Limit", 1], ["Response", 1], ["Requests/s", 1], ["Hits", 1],
      ["Failures", 1], ["Sessions", 1], ["Last error", 0]]) {
      const th = el("th", n ? "n" : null, label);
      th.scope = "col";
      headRow.appendChild(th);
    }
    table.createTHead().appendChild(headRow);
    table.appendChild(el("tbody"));
    wrap.appendChild(table);
    card.appendChild(wrap);
    card.parts.body = table.tBodies[0];
    return card;
  }

  function makeBackendRow(b) {
    const tr = el("tr");
    tr.dataset.backend = String(b.number);
    cell(tr, "number", "key");
    cell(tr, "address");
    cell(tr, "state");
    tr.meter = meterCell(tr, "open");
    cell(tr, "queued", "n");
    cell(tr, "limit", "n");
    tr.resp = sparkCell(tr, "response", "resp");
    tr.rate = sparkCell(tr, "rate");
    cell(tr, "hits", "n");
    cell(tr, "failures", "n");
    cell(tr, "sessions", "n");
    cell(tr, "last_error", "err");
    return tr;
  }

  function updateBackendRow(tr, b, h) {
    const word = backendState(b);
    setText(field(tr, "number"), String(b.number));
    setText(field(tr, "address"), b.address || "");
    stateBadge(field(tr, "state"), word);
    setRowState(tr, word);
    setText(tr.meter.v, count(b.open_connections));
    setMeter(tr.meter, b.open_connections, b.limit);
    setText(field(tr, "queued"), count(b.queued));
    setText(field(tr, "limit"), count(b.limit));
    const series = (h.backends || {})[String(b.number)] || {};
    // Never answered: no response time, rather than a 0 ms that looks fast.
    setText(tr.resp.v, b.hits ? duration(b.avg_response_time) : "–");
    drawSpark(tr.resp.svg, series.response, h.length, duration);
    setText(tr.rate.v, rate(last(series.rate)));
    drawSpark(tr.rate.svg, series.rate, h.length, rate);
    setText(field(tr, "hits"), count(b.hits));
    setText(field(tr, "failures"), count(b.failures));
    setText(field(tr, "sessions"), count(b.sessions));
    setText(field(tr, "last_error"), b.last_error || "");
    setTitle(field(tr, "last_error"), b.last_error || "");
  }

  function renderPools(r, h) {
    const backends = new Map((r.backends || []).map((b) => [b.number, b]));
    const sessions = new Map((r.sessions || []).map((s) => [s.pool, s]));
    const pools = (r.pools || []).slice();
    const pooled = new Set(pools.flatMap((p) => p.backends || []));
    const loose = (r.backends || []).filter((b) => !pooled.has(b.number));
    if (loose.length) pools.push({ name: "(no pool)", policy: "", backends: loose.map((b) => b.number), loose: true });
    sync($("pools"), pools, (p) => p.name, makePool, (card, p) => {
      const parts = card.parts;
      setText(parts.name, p.name);
      setText(parts.policy, p.policy || "");
      parts.policy.hidden = !p.policy;
      parts.refusing.hidden = !p.refusing_connections;
      const ph = (h.pools || {})[p.name] || {};
      const st = parts.stats;
      for (const key of Object.keys(st)) st[key].box.hidden = !!p.loose;
      const limit = p.queue_limit;
      setText(st.queued.text, count(p.queued) + (limit ? " / " + count(limit) : ""));
      st.queued.box.classList.toggle("bad", limit > 0 && p.queued >= limit * 0.75);
      drawSpark(st.queued.svg, ph.queued, h.length, count);
      setText(st.oldest_wait.text, duration(p.oldest_wait));
      setText(st.queue_timeout.text, duration(p.queue_timeout));
      setText(st.refused_requests.text, count(p.refused_requests));
      st.refused_requests.box.classList.toggle("bad", (last(ph.refused_rate) || 0) > 0);
      drawSpark(st.refused_requests.svg, ph.refused_rate, h.length, rate);
      setText(st.refused_connections.text, count(p.refused_connections));
      setText(st.expired.text, count(p.expired));
      const s = sessions.get(p.name);
      st.sessions.box.hidden = st.hit_rate.box.hidden = !s;
      if (s) {
        setText(st.sessions.text, count(s.size) + " / " + count(s.max_size));
        drawSpark(st.sessions.svg, ((h.sessions || {})[p.name] || {}).size, h.length, count);
        setText(st.hit_rate.text, percent(s.hit_rate) + " · " + count(s.misses) + " missed");
        setTitle(st.hit_rate.box, count(s.hits) + " requests found their session, " + count(s.misses) + " did not");
      }
      const rows = (p.backends || []).map((n) => backends.get(n)).filter(Boolean);
      sync(parts.body, rows, (b) => b.number, makeBackendRow, (tr, b) => updateBackendRow(tr, b, h));
    });
  }

  // ---------------------------------------------------------------- the loop
  // The packet scheduler's counters (a node with a VIP): what it did with the frames.
  function renderPackets(p) {
    const box = $("packets");
    box.hidden = !p;
    if (!p) return;
    setText($("packets-sub"), (p.forwarding ? "forwarding" : "standing by") + " · " +
      (p.vip || "") + " on " + (p.interface || "") + " · " +
      (p.fast_path === "nftables" ? "kernel fast path (nftables)" : "forwarded in Python") +
      " · " + (p.path || ""));
    const items = [];
    if (p.kernel_forwarded) {
      Object.entries(p.kernel_forwarded).forEach(([node, n]) =>
        items.push(["kernel to node " + node, n]));
      items.push(["kernel misses", p.kernel_misses], ["kernel buckets", p.kernel_buckets]);
      if (p.kernel_errors) items.push(["kernel errors", p.kernel_errors]);
    }
    items.push(["frames in", p.frames_in], ["local", p.local]);
    Object.entries(p.forwarded || {}).forEach(([node, n]) => items.push(["to node " + node, n]));
    items.push(["table misses", p.table_misses]);
    Object.entries(p.dropped || {}).forEach(([reason, n]) => {
      if (n) items.push(["dropped " + reason.replace("_", " "), n]);
    });
    if (p.send_errors) items.push(["send errors", p.send_errors]);
    const legend = $("packets-legend");
    legend.replaceChildren(...items.map(([label, n]) => {
      const item = el("span", "item");
      item.append(label + " ", el("b", null, count(n)));
      return item;
    }));
  }

  function render(r) {
    const h = r.history || {};
    state.times = h.times || [];
    renderHeader(r);
    renderTiles(r, h);
    renderArray(r, h);
    renderPackets(r.packets);
    renderPools(r, h);
  }

  function connected(ok) {
    const live = $("live");
    live.classList.toggle("ok", ok);
    live.classList.toggle("lost", !ok);
    document.body.classList.toggle("lost", !ok && state.lastOk !== null);
    $("offline").hidden = ok || state.lastOk === null;
    if (ok) {
      state.lastOk = new Date();
      setText($("live-text"), "live · " + state.lastOk.toLocaleTimeString("en-GB"));
    } else {
      setText($("live-text"), "no answer");
      if (state.lastOk) setText($("offline-since"), state.lastOk.toLocaleTimeString("en-GB"));
    }
  }

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, delay);
  }

  async function poll() {
    if (document.hidden) return; // resumed by visibilitychange
    if (state.inFlight) return;
    state.inFlight = true;
    let failed = false;
    try {
      const answer = await fetch("api/status", { cache: "no-store", headers: { Accept: "application/json" } });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const report = await answer.json();
      const refresh = (report.dashboard || {}).refresh;
      if (refresh > 0 && refresh !== state.refresh) {
        state.refresh = refresh;
        setText($("refresh-note"), "refreshes every " + refresh + " s");
      }
      render(report);
      connected(true);
    } catch (err) {
      failed = true;
      connected(false);
      if (window.console) console.warn("dlba dashboard:", err);
    } finally {
      state.inFlight = false;
    }
    schedule(state.refresh * 1000 * (failed ? 2 : 1));
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) schedule(0); });
  schedule(0);
})();
