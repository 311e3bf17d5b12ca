// citysense dashboard: plain JavaScript and inline SVG, no library, no network but this API.
// Every value from the API is put into the page as text (textContent), never as HTML.
"use strict";

const REFRESH_MS = 30000;
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const state = { catalog: null, metric: "pm25", district: "", timer: null };

function key() {
  try { return window.sessionStorage.getItem("citysense-key") || ""; } catch (e) { return ""; }
}

async function api(path) {
  const headers = {};
  const k = key();
  if (k) headers["Authorization"] = "Bearer " + k;
  const response = await fetch(path, { headers });
  if (response.status === 401) {
    document.getElementById("keyform").hidden = false;
  }
  const body = await response.json();
  if (!response.ok) {
    const err = new Error(body.detail || ("HTTP " + response.status));
    err.status = response.status;
    throw err;
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

function fmt(v, digits) {
  if (v === null || v === undefined) return "–";
  return Number(v).toFixed(digits === undefined ? 1 : digits);
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.parse(state.now) - Date.parse(iso)) / 1000);
  if (s < 120) return Math.round(s) + " s ago";
  if (s < 7200) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function textColour(bg) {
  if (!bg) return "#000";
  const n = parseInt(bg.slice(1), 16);
  const lum = 0.299 * (n >> 16) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255);
  return lum > 150 ? "#000" : "#fff";
}

function badge(aqi) {
  const b = el("span", { class: "badge" }, aqi && aqi.aqi != null ? aqi.aqi : "–");
  if (aqi && aqi.colour) { b.style.background = aqi.colour; b.style.color = textColour(aqi.colour); }
  return b;
}

// ------------------------------------------------------------------ districts: map + AQI

function renderMap(districts) {
  const map = document.getElementById("map");
  clear(map);
  const placed = districts.filter(d => d.lat !== null && d.lon !== null);
  const note = document.getElementById("map-note");
  let points;
  if (placed.length) {
    const lats = placed.map(d => d.lat), lons = placed.map(d => d.lon);
    const minLat = Math.min(...lats), maxLat = Math.max(...lats);
    const minLon = Math.min(...lons), maxLon = Math.max(...lons);
    const spanLat = Math.max(maxLat - minLat, 1e-3), spanLon = Math.max(maxLon - minLon, 1e-3);
    points = placed.map(d => ({ d, x: 50 + 300 * (d.lon - minLon) / spanLon, y: 215 - 170 * (d.lat - minLat) / spanLat }));
    note.textContent = "positions: centre of each district's registered devices";
  } else {
    points = districts.map((d, i) => ({ d, x: 60 + (i % 4) * 95, y: 60 + Math.floor(i / 4) * 80 }));
    note.textContent = "no device registry: districts shown without positions";
  }
  map.append(svg("rect", { x: 0, y: 0, width: 400, height: 260, fill: "#eef3f7", rx: 6 }));
  for (const p of points) p.r = 16 + Math.min(14, Math.sqrt(p.d.device_count) * 2);
  // Districts close together would hide each other: push overlapping circles apart a little.
  for (let step = 0; step < 60; step++) {
    for (let i = 0; i < points.length; i++) {
      for (let j = i + 1; j < points.length; j++) {
        const a = points[i], b = points[j];
        let dx = b.x - a.x, dy = b.y - a.y;
        const dist = Math.hypot(dx, dy) || 0.01, need = a.r + b.r + 18;
        if (dist >= need) continue;
        if (dist === 0.01) { dx = 1; dy = 0; }
        const push = (need - dist) / 2 / dist;
        a.x -= dx * push; a.y -= dy * push; b.x += dx * push; b.y += dy * push;
      }
    }
    for (const p of points) {
      p.x = Math.min(400 - p.r - 4, Math.max(p.r + 4, p.x));
      p.y = Math.min(260 - p.r - 18, Math.max(p.r + 4, p.y));
    }
  }
  for (const { d, x, y, r } of points) {
    const colour = (d.aqi && d.aqi.colour) || "#c8d0d8";
    const g = svg("g", { class: "district" });
    g.append(svg("title", {}, d.district + ": AQI " + (d.aqi && d.aqi.aqi != null ? d.aqi.aqi : "n/a")));
    g.append(svg("circle", { cx: x, cy: y, r, fill: colour, stroke: "#33475b", "stroke-width": 1.5, "fill-opacity": 0.85 }));
    g.append(svg("text", { x, y: y + 5, "text-anchor": "middle", "font-size": 14, "font-weight": 700, fill: textColour(colour) }, d.aqi && d.aqi.aqi != null ? d.aqi.aqi : "–"));
    g.append(svg("text", { x, y: y + r + 14, "text-anchor": "middle", "font-size": 12, fill: "#1d2733" }, d.district));
    map.append(g);
  }
}

function renderAqi(districts) {
  const body = document.querySelector("#aqi-table tbody");
  clear(body);
  for (const d of districts) {
    const a = d.aqi || {};
    body.append(el("tr", {},
      el("td", {}, d.district),
      el("td", {}, badge(a)),
      el("td", {}, a.category || "no data"),
      el("td", {}, (a.primary_pollutants || []).join(", ") || "–"),
      el("td", { class: "num" }, d.device_count)));
  }
}

function fillDistrictSelect(districts) {
  const select = document.getElementById("district");
  const have = new Set([...select.options].map(o => o.value));
  for (const d of districts) {
    if (!have.has(d.district)) select.append(el("option", { value: d.district }, d.district));
  }
}

// ------------------------------------------------------------------ time series chart

function renderChart(resp) {
  const chart = document.getElementById("chart");
  const legend = document.getElementById("legend");
  clear(chart); clear(legend);
  const W = 1200, H = 300, L = 56, R = 14, T = 12, B = 28;
  const series = resp.series.filter(s => s.points.length);
  if (!series.length) {
    chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "tick" }, "no data in the last 24 hours"));
    return;
  }
  const t0 = Date.parse(resp.start), t1 = Date.parse(resp.end);
  let lo = Infinity, hi = -Infinity;
  for (const s of series) for (const [, v] of s.points) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  if (lo === hi) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x = t => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
  const y = v => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    chart.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v, Math.abs(hi - lo) < 10 ? 2 : 0)));
  }
  for (let i = 0; i <= 6; i++) {
    const t = t0 + (t1 - t0) * i / 6;
    const label = new Date(t).toISOString().slice(11, 16);
    const anchor = i === 0 ? "start" : i === 6 ? "end" : "middle";
    chart.append(svg("text", { x: x(t), y: H - 8, "text-anchor": anchor, class: "tick" }, label));
  }
  chart.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  chart.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const d = s.points.map(([t, v], j) => (j ? "L" : "M") + x(Date.parse(t)).toFixed(1) + " " + y(v).toFixed(1)).join(" ");
    chart.append(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 2, class: "series" }));
    const name = Object.values(s.group).join(" / ") || resp.metric;
    const item = el("span", {}, name);
    item.style.setProperty("--c", colour);
    legend.append(item);
  });
  legend.append(el("span", { class: "muted" }, resp.agg + " per " + resp.every + (resp.unit ? ", " + resp.unit : "")));
}

function fillMetricSelect(catalog) {
  const select = document.getElementById("metric");
  clear(select);
  for (const [domain, doc] of Object.entries(catalog.domains)) {
    const group = el("optgroup", { label: domain });
    for (const [name, m] of Object.entries(doc.metrics)) {
      if (m.type !== "float" || m.cumulative) continue;
      const opt = el("option", { value: name }, name + (m.unit ? " (" + m.unit + ")" : ""));
      if (name === state.metric) opt.selected = true;
      group.append(opt);
    }
    select.append(group);
  }
}

function domainOf(metric) {
  for (const [domain, doc] of Object.entries(state.catalog.domains)) if (metric in doc.metrics) return domain;
  return "environment";
}

async function loadChart() {
  if (!state.catalog) return;
  const params = new URLSearchParams({ metric: state.metric, agg: "mean" });
  if (state.district) { params.set("district", state.district); params.set("group_by", "site"); }
  else params.set("group_by", "district");
  const path = "/api/v1/" + domainOf(state.metric) + "/series?";
  try {
    renderChart(await api(path + params));
  } catch (err) {
    if (err.status !== 403 || !state.district) throw err;
    // a viewer key sees districts, not sites: the district's own line
    params.set("group_by", "district");
    renderChart(await api(path + params));
  }
}

// ------------------------------------------------------------------ traffic, leaks, devices

const CONGESTION_COLOURS = { free: "#2ca02c", light: "#98c44a", moderate: "#ffbf00", heavy: "#ff7f0e", severe: "#d62728" };

function renderCongestion(resp) {
  const chart = document.getElementById("congestion");
  clear(chart);
  const rows = resp.districts;
  const H = Math.max(60, 26 * rows.length + 24);
  chart.setAttribute("viewBox", "0 0 400 " + H);
  if (!rows.length) chart.append(svg("text", { x: 200, y: 30, "text-anchor": "middle", class: "tick" }, "no traffic counters reporting"));
  rows.forEach((d, i) => {
    const yy = 8 + i * 26, w = 200 * (d.index || 0) / 10;
    // the level comes from the API (analytics/congestion.py holds the thresholds)
    const colour = d.index === null ? "#c8d0d8" : CONGESTION_COLOURS[d.level] || "#c8d0d8";
    chart.append(svg("text", { x: 90, y: yy + 14, "text-anchor": "end", "font-size": 12 }, d.district));
    chart.append(svg("rect", { x: 96, y: yy, width: 200, height: 18, fill: "#eef1f4", rx: 3 }));
    chart.append(svg("rect", { x: 96, y: yy, width: Math.max(1, w), height: 18, fill: colour, rx: 3, class: "bar" }));
    chart.append(svg("text", { x: 302, y: yy + 14, "font-size": 12 }, d.index === null ? "n/a" : fmt(d.index) + " " + d.level));
  });
  const body = document.querySelector("#sites-table tbody");
  clear(body);
  for (const s of resp.sites) {
    body.append(el("tr", {},
      el("td", {}, s.district), el("td", {}, s.site),
      el("td", { class: "num" }, fmt(s.index)),
      el("td", { class: "num" }, fmt(s.speed) + " km/h"),
      el("td", { class: "num" }, fmt(s.free_flow) + " km/h"),
      el("td", { class: "num" }, fmt(s.occupancy) + " %")));
  }
}

function renderLeaks(resp) {
  const body = document.querySelector("#leak-table tbody");
  clear(body);
  for (const m of resp.leaks) {
    body.append(el("tr", {}, el("td", {}, m.device), el("td", {}, m.district), el("td", {}, m.reasons.join("; "))));
  }
  // a viewer key: suspected leaks counted per district, no meters
  for (const [district, n] of Object.entries(resp.districts || {})) {
    if (resp.leaks.length) break;
    body.append(el("tr", {}, el("td", {}, n + " meter" + (n === 1 ? "" : "s")), el("td", {}, district), el("td", {}, "suspected leak")));
  }
  if (!resp.leaks.length && !Object.keys(resp.districts || {}).length) body.append(el("tr", {}, el("td", { colspan: 3, class: "muted" }, "no suspected leaks")));
  document.getElementById("leak-note").textContent =
    resp.meters_checked + " meters checked; night window " + resp.night_start.slice(11, 16) + "–" +
    resp.night_end.slice(11, 16) + " UTC, threshold " + resp.threshold + " m³/h";
}

// a device with open data-quality flags: marked, the reasons in the tooltip
function flaggedCell(d) {
  const flags = d.flags || [];
  if (!flags.length) return el("td", {}, d.device);
  const why = flags.map((f) => f.reason + " (" + f.metric + ") since " + f.since).join("\n");
  return el("td", { class: "flagged", title: why }, "⚑ " + d.device);
}

function renderDevices(resp) {
  const body = document.querySelector("#device-table tbody");
  clear(body);
  for (const d of resp.devices) {
    body.append(el("tr", {},
      el("td", { class: "st-" + d.status }, d.status),
      flaggedCell(d), el("td", {}, d.kind), el("td", {}, d.district),
      el("td", {}, ago(d.last_seen)),
      el("td", { class: "num" }, fmt(d.battery, 0)),
      el("td", { class: "num" }, fmt(d.rsrp, 0)),
      el("td", { class: "num" }, fmt(d.snr, 0)),
      el("td", { class: "num" }, fmt(d.ecl, 0))));
  }
  const c = resp.counts;
  document.getElementById("device-counts").textContent =
    c.offline + " offline, " + c.stale + " stale, " + c.online + " online";
}

function renderAlarms(resp) {
  // most severe first, then newest (the alerts service already orders them so)
  const card = document.getElementById("alarm-card");
  card.hidden = false;
  const body = document.querySelector("#alarm-table tbody");
  clear(body);
  for (const a of resp.alarms) {
    const subject = Object.entries(a.subject).map(([k, v]) => k + " " + v).join(", ");
    body.append(el("tr", {},
      el("td", { class: "sev-" + a.severity }, a.severity),
      el("td", {}, a.state), el("td", {}, a.rule), el("td", {}, subject),
      el("td", { class: "num" }, fmt(a.value, 1)), el("td", {}, ago(a.raised_at))));
  }
  document.getElementById("alarm-counts").textContent =
    resp.alarms.length ? resp.alarms.length + " active" : "none active";
}

async function alarmSection() {
  if (state.noAlerts) return true;
  try {
    const resp = await api("/api/v1/alarms");
    if (!resp.configured) { state.noAlerts = true; return true; }  // no alerts service
    renderAlarms(resp); clearError("alarm-card");
  } catch (err) {
    document.getElementById("alarm-card").hidden = false;
    showError("alarm-card", err);
  }
  return true;
}

function showError(cardId, err) {
  const card = document.getElementById(cardId);
  let p = card.querySelector(".error");
  if (!p) { p = el("p", { class: "error muted small" }); card.append(p); }
  p.textContent = err.status === 403 ? "needs an operator key" : "unavailable: " + err.message;
}

function clearError(cardId) {
  const p = document.getElementById(cardId).querySelector(".error");
  if (p) p.remove();
}

async function section(cardId, path, render) {
  try { await render(await api(path)); clearError(cardId); return true; }
  catch (err) { showError(cardId, err); return false; }
}

async function chartSection() {
  try { await loadChart(); clearError("chart-card"); return true; }
  catch (err) { showError("chart-card", err); return false; }
}

async function refresh() {
  clearTimeout(state.timer);
  try {
    if (!state.catalog) {
      state.catalog = await api("/api/v1/catalog");
      fillMetricSelect(state.catalog);
    }
    const results = await Promise.all([
      section("map-card", "/api/v1/districts", resp => {
        state.now = resp.at;
        renderMap(resp.districts); renderAqi(resp.districts); fillDistrictSelect(resp.districts);
      }),
      section("traffic-card", "/api/v1/traffic/congestion", renderCongestion),
      section("leak-card", "/api/v1/utility/leaks", renderLeaks),
      chartSection(),
    ]);
    await alarmSection();
    if (!state.devicesForbidden) {
      const shown = await section("device-card", "/api/v1/devices", renderDevices);
      // a viewer key may not list devices: ask once, not at every refresh
      if (!shown && document.querySelector("#device-card .error").textContent.startsWith("needs")) {
        state.devicesForbidden = true;
      }
    }
    const ok = results.every(Boolean);
    document.getElementById("status").textContent =
      (ok ? "updated " : "partly updated ") + new Date().toISOString().slice(11, 19) + " UTC";
    document.body.dataset.loaded = "1";
  } catch (err) {
    document.getElementById("status").textContent = "cannot reach the API: " + err.message;
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

document.getElementById("metric").addEventListener("change", e => { state.metric = e.target.value; loadChart().catch(err => showError("chart-card", err)); });
document.getElementById("district").addEventListener("change", e => { state.district = e.target.value; loadChart().catch(err => showError("chart-card", err)); });
document.getElementById("keyform").addEventListener("submit", e => {
  e.preventDefault();
  try { window.sessionStorage.setItem("citysense-key", document.getElementById("key").value); } catch (err) { /* private mode */ }
  document.getElementById("keyform").hidden = true;
  state.devicesForbidden = false;
  refresh();
});
refresh();
