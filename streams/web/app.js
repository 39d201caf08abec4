// The ofisync dashboard: polls /dashboard/api/state and draws it. No libraries, no network
// beyond the worker. Charts are plain SVG polylines over the last hour of samples.
"use strict";

const COLORS = ["var(--line1)", "var(--line2)", "var(--line3)", "#059669"];
const $ = (id) => document.getElementById(id);
const fmt = (n, digits = 0) =>
  n === null || n === undefined ? "–" : Number(n).toLocaleString("en", { maximumFractionDigits: digits });
const secs = (s) => (s === null || s === undefined ? "–" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`);

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(tag === "svg" || ["polyline", "line", "text", "g"].includes(tag)
    ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// series: [{name, values: [number|null]}], drawn against the sample times `t`.
function chart(svg, t, series) {
  svg.replaceChildren();
  const W = 600, H = 160, L = 48, B = 18, T = 8;
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...all);
  const t0 = t[0], t1 = t[t.length - 1];
  const x = (ti) => L + ((ti - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
  const y = (v) => H - B - (v / max) * (H - B - T);
  svg.append(el("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  svg.append(el("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  svg.append(el("text", { x: 2, y: T + 8 }, fmt(max, max < 10 ? 2 : 0)));
  svg.append(el("text", { x: 2, y: H - B }, "0"));
  if (t.length > 1) {
    const minutes = Math.round((t1 - t0) / 60);
    svg.append(el("text", { x: L, y: H - 4 }, `${minutes} min ago`));
    svg.append(el("text", { x: W - 24, y: H - 4 }, "now"));
  }
  series.forEach((s, i) => {
    const points = s.values
      .map((v, k) => (v === null || v === undefined ? null : `${x(t[k]).toFixed(1)},${y(v).toFixed(1)}`))
      .filter(Boolean);
    const line = el("polyline", { points: points.join(" "), stroke: COLORS[i % COLORS.length],
      "data-series": s.name, "data-points": points.length,
      "data-last": s.values.length ? String(s.values[s.values.length - 1]) : "" });
    svg.append(line);
    svg.append(el("text", { x: L + 8 + i * 120, y: T + 10, fill: COLORS[i % COLORS.length] }, s.name));
  });
  svg.setAttribute("data-drawn", String(t.length));
}

function tile(id, text, bad) {
  const node = $(id);
  node.textContent = text;
  node.parentElement.classList.toggle("bad", Boolean(bad));
}

function render(s) {
  const share = s.worker && s.worker.of > 1
    ? ` · ${s.worker.name} of ${s.worker.of} workers: rates, latency and busy are its share`
    : "";
  $("sampled").textContent = `sampled ${new Date(s.sampled_at * 1000).toLocaleTimeString()}${share}`;
  const verdict = $("verdict");
  verdict.replaceChildren();
  if (s.problems.length) {
    verdict.className = "verdict bad";
    verdict.append(`${s.problems.length} thing(s) need attention`);
    const list = el("ul");
    s.problems.forEach((p) => list.append(el("li", {}, p)));
    verdict.append(list);
  } else {
    verdict.className = "verdict ok";
    verdict.textContent = "Everything is in sync: no lag, nothing waiting, every component up.";
  }
  const health = $("health");
  health.replaceChildren(...Object.entries(s.health)
    .sort(([, a], [, b]) => Number(a) - Number(b))
    .map(([name, up]) => el("span", { class: `chip ${up ? "up" : "down"}`, "data-component": name,
      "data-up": String(up) }, `${up ? "●" : "✕"} ${name.replaceAll("_", " ")}`)));

  const lag = $("total-lag");
  lag.dataset.value = String(s.total_lag);
  tile("total-lag", fmt(s.total_lag), s.total_lag > 0 && s.problems.some((p) => p.includes("lag")));
  tile("rate-erp_to_crm", fmt(s.rates.erp_to_crm, 1));
  tile("rate-crm_to_erp", fmt(s.rates.crm_to_erp, 1));
  for (const d of ["erp_to_crm", "crm_to_erp"]) {
    tile(`lat-${d}`, `${secs(s.latency[d].p50)} / ${secs(s.latency[d].p99)}`, s.latency[d].p99 > 2);
    // Near 100 %, changes queue behind the batches before them (alert OfisyncSinkSaturated).
    tile(`busy-${d}`, `${fmt(100 * s.busy[d])} %`, s.busy[d] > 0.9);
  }
  const sum = (o) => Object.values(o || {}).reduce((a, b) => a + b, 0);
  tile("echoes", fmt(sum(s.echoes)));
  tile("conflicts", fmt(s.conflicts));
  tile("lock_violations", fmt(s.lock_violations));
  tile("parked", fmt(s.parked), s.parked > 0);
  tile("dead_letters", fmt(s.dead_letters), s.dead_letters > 0);
  tile("documents", `${fmt(s.documents.waiting)} / ${fmt(s.documents.failing)}`, s.documents.failing > 0);
  tile("fallbacks", fmt(sum(s.fallbacks)));

  const h = s.history, t = h.map((p) => p.t);
  chart($("chart-lag"), t, [{ name: "total lag", values: h.map((p) => p.total_lag) }]);
  chart($("chart-rates"), t, [
    { name: "→ CRM", values: h.map((p) => p.rates.erp_to_crm) },
    { name: "→ OfiViaje", values: h.map((p) => p.rates.crm_to_erp) },
  ]);
  chart($("chart-latency"), t, [
    { name: "p50 → CRM", values: h.map((p) => p.latency.erp_to_crm.p50) },
    { name: "p99 → CRM", values: h.map((p) => p.latency.erp_to_crm.p99) },
    { name: "p50 → OfiViaje", values: h.map((p) => p.latency.crm_to_erp.p50) },
    { name: "p99 → OfiViaje", values: h.map((p) => p.latency.crm_to_erp.p99) },
  ]);
  const slots = Object.keys(h.length ? h[h.length - 1].wal : {});
  chart($("chart-wal"), t, slots.map((slot) => ({ name: slot, values: h.map((p) => p.wal[slot] ?? null) })));

  const rows = [...s.partitions].sort((a, b) => (b.lag ?? -1) - (a.lag ?? -1));
  $("partitions").tBodies[0].replaceChildren(...rows.map((p) => {
    const tr = el("tr", { class: p.lag ? "behind" : "", "data-group": p.group, "data-topic": p.topic,
      "data-partition": p.partition, "data-lag": p.lag === null ? "" : p.lag });
    [p.group, p.topic, p.partition, p.committed ?? "–", p.end, p.lag ?? "–"].forEach((v, i) =>
      tr.append(el("td", i >= 2 ? { class: "num" } : {}, String(v))));
    return tr;
  }));
  $("slots").tBodies[0].replaceChildren(...s.slots.map((x) => {
    const tr = el("tr", { class: x.active ? "" : "behind", "data-slot": x.slot });
    [x.database, x.slot, x.active ? "yes" : "NO", fmt(x.retained_wal_bytes), fmt(x.unconfirmed_bytes)]
      .forEach((v, i) => tr.append(el("td", i >= 3 ? { class: "num" } : {}, String(v))));
    return tr;
  }));
  document.body.dataset.loaded = "true";
}

async function refresh() {
  try {
    const response = await fetch("/dashboard/api/state", { cache: "no-store" });
    if (response.status === 503) {
      $("verdict").textContent = "The worker is collecting its first figures…";
      return;
    }
    render(await response.json());
  } catch (err) {
    $("verdict").className = "verdict bad";
    $("verdict").textContent = `The worker does not answer (${err}). Is it running? \`ofisync status\``;
  }
}

refresh();
setInterval(refresh, 5000);
