// natsflow ui: draws the layout the server computed, then polls /api/status and updates numbers
// in place. Plain DOM + SVG, no framework and no build step.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let layout = null;
let revision = null; // of the pipeline file the drawing shows
let interval = 1000;
let selected = null;
let lastStatus = null;
let shownDeadLetters = null; // dead-letter total the open panel was loaded with

function el(tag, attrs = {}, parent = null, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function fmtInt(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
function fmtRate(r) {
  if (r === null || r === undefined) return "–";
  return (r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString("en-US")) + "/s";
}
function fmtTime(ms) {
  if (ms === null || ms === undefined) return "–";
  return new Date(ms).toISOString().slice(11, 19) + "Z";
}

// Rows shown inside every box: [field, label]; sources have no buffer, so no pending. The box
// heights come from ROWS in layout.py: keep the counts in step.
const ROWS = {
  source: [["rate", "out"], ["replicas", "replicas"], ["watermark_ms", "watermark"]],
  udf: [["rate", "rate"], ["pending", "pending"], ["replicas", "replicas"], ["buffers", "stream"], ["watermark_ms", "watermark"], ["dead_letters", "errors"]],
  reduce: [["rate", "rate"], ["pending", "pending"], ["held", "held in windows"], ["replicas", "replicas"], ["buffers", "stream"], ["watermark_ms", "watermark"], ["dead_letters", "errors"]],
  sink: [["rate", "rate"], ["pending", "pending"], ["replicas", "replicas"], ["buffers", "stream"], ["dead_letters", "errors"]],
};

// The buffer's JetStream replication: "R3 · n2" (replicas · leader), plus how many replicas are
// not current (offline or behind, e.g. while a node is down). A partitioned buffer lists each
// partition's leader, or their count when there are more than two.
function fmtBuffers(v) {
  const bufs = v.buffers || [];
  if (!bufs.length) return "–";
  const replicas = [...new Set(bufs.map((b) => "R" + b.replicas))].join("/");
  const leaders = [...new Set(bufs.map((b) => b.leader).filter(Boolean))];
  const behind = bufs.reduce((n, b) => n + b.not_current.length, 0);
  const parts = [replicas];
  if (leaders.length) parts.push(leaders.length <= 2 ? leaders.join(",") : `${leaders.length} leaders`);
  if (behind) parts.push(`${behind} behind`);
  return parts.join(" · ");
}

function fmtField(field, v) {
  if (field === "rate") return fmtRate(v.rate);
  if (field === "watermark_ms") return fmtTime(v.watermark_ms);
  if (field === "buffers") return fmtBuffers(v);
  return fmtInt(v[field]);
}

function isBad(field, v) {
  if (field === "dead_letters") return v.dead_letters > 0;
  if (field === "buffers") return (v.buffers || []).some((b) => b.not_current.length > 0);
  return false;
}

function edgePath(e, a, b, height) {
  if (!e.back) {
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2, dx = (x2 - x1) / 2;
    return { d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2 - 6},${y2}`, mx: (x1 + x2) / 2, my: (y1 + y2) / 2 - 6 };
  }
  // A cycle: leave the bottom of the writer, run under the graph, come up into the reader.
  const x1 = a.x + a.w * 0.6, y1 = a.y + a.h, x2 = b.x + b.w * 0.4, y2 = b.y + b.h + 6, low = height - 12;
  return { d: `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`, mx: (x1 + x2) / 2, my: low - 4 };
}

function draw() {
  const svg = $("dag");
  svg.replaceChildren();
  svg.setAttribute("width", layout.width);
  svg.setAttribute("height", layout.height);
  svg.setAttribute("viewBox", `0 0 ${layout.width} ${layout.height}`);
  const defs = el("defs", {}, svg);
  for (const level of ["ok", "busy", "full", "unknown"]) {
    const m = el("marker", { id: `arrow-${level}`, viewBox: "0 0 10 10", refX: "8", refY: "5", markerUnits: "userSpaceOnUse", markerWidth: "11", markerHeight: "11", orient: "auto-start-reverse" }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", style: `fill: var(--${level})` }, m);
  }
  const boxes = Object.fromEntries(layout.nodes.map((n) => [n.name, n]));
  const edges = el("g", { class: "edges" }, svg);
  for (const e of layout.edges) {
    const p = edgePath(e, boxes[e.from], boxes[e.to], layout.height);
    const path = el("path", { class: "edge unknown", d: p.d, "data-from": e.from, "data-to": e.to, "marker-end": "url(#arrow-unknown)" }, edges);
    if (e.fused) path.style.strokeDasharray = "6 4"; // no buffer: the ends run in one process
    el("title", {}, path, `${e.from} → ${e.to}${e.tags ? " when tags " + e.tags : ""}${e.fused ? " (fused: one process, no buffer)" : ""}`);
    el("text", { class: "edge-label", x: p.mx, y: p.my, "text-anchor": "middle", "data-from": e.from, "data-to": e.to }, edges, e.tags || "");
  }
  const nodes = el("g", { class: "nodes" }, svg);
  for (const n of layout.nodes) {
    const g = el("g", { class: `node ${n.kind}`, "data-vertex": n.name, transform: `translate(${n.x},${n.y})`, tabindex: "0" }, nodes);
    el("rect", { class: "box", width: n.w, height: n.h, rx: 8 }, g);
    el("rect", { class: "band", width: n.w, height: 26, rx: 8 }, g);
    el("rect", { class: "band", y: 16, width: n.w, height: 10 }, g); // square off the band's bottom corners
    el("text", { class: "title", x: 10, y: 18 }, g, n.name);
    el("text", { class: "kind", x: n.w - 10, y: 18, "text-anchor": "end" }, g, n.kind);
    ROWS[n.reduce ? "reduce" : n.kind].forEach(([field, label], i) => {
      const y = 42 + i * 15;
      el("text", { class: "label", x: 10, y }, g, label);
      el("text", { class: "value", x: n.w - 10, y, "text-anchor": "end", "data-field": field }, g, "–");
    });
    g.addEventListener("click", () => select(n.name));
    g.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(n.name); });
  }
}

async function update(status) {
  if (status.revision !== undefined && status.revision !== revision) {
    await loadPipeline(); // the file changed (natsflow up applies edits live): redraw
    if (selected && !layout.nodes.some((n) => n.name === selected)) closePanel();
  }
  lastStatus = status;
  $("updated").textContent = status.time ? `updated ${fmtTime(status.time)} · poll #${status.poll}` : "waiting for data";
  const err = $("error");
  err.hidden = !status.error;
  err.textContent = status.error || "";
  for (const v of status.vertices) {
    const g = document.querySelector(`g.node[data-vertex="${CSS.escape(v.name)}"]`);
    if (!g) continue;
    for (const t of g.querySelectorAll("text.value")) {
      const field = t.dataset.field;
      t.textContent = fmtField(field, v);
      t.classList.toggle("bad", isBad(field, v));
    }
  }
  for (const e of status.edges) {
    const sel = `[data-from="${CSS.escape(e.from)}"][data-to="${CSS.escape(e.to)}"]`;
    const level = e.level || "unknown";
    const path = document.querySelector(`path.edge${sel}`);
    if (path) {
      path.setAttribute("class", `edge ${level}`);
      path.setAttribute("marker-end", `url(#arrow-${level})`);
      path.dataset.usage = e.usage === null ? "" : e.usage;
    }
    const label = document.querySelector(`text.edge-label${sel}`);
    const drawn = layout.edges.find((x) => x.from === e.from && x.to === e.to);
    const tags = drawn ? drawn.tags : null;
    if (label) label.textContent = [tags, e.usage === null ? null : `${e.usage.toFixed(1)}% used`].filter(Boolean).join(" · ");
  }
  if (selected) {
    fillLive(selected);
    const v = status.vertices.find((x) => x.name === selected);
    if (v && v.dead_letters !== shownDeadLetters) loadDetail(selected); // new dead letters arrived
  }
}

function fillLive(name) {
  const v = lastStatus && lastStatus.vertices.find((x) => x.name === name);
  const table = $("panel-live");
  table.replaceChildren();
  if (!v) return;
  const rows = [
    ["rate (acked/s)", fmtRate(v.rate)], ["arriving", fmtRate(v.inRate)], ["pending", fmtInt(v.pending)],
    ["ack pending", fmtInt(v.ack_pending)],
    ["buffer", v.buffered === null ? "–" : `${fmtInt(v.buffered)} / ${fmtInt(v.capacity)} (${v.usage}%, limit ${v.usageLimit}%)`],
    ["replicas", v.replicas === null ? "–" : `${v.replicas} (from ${v.replicasFrom})`],
    ...(v.buffers || []).map((b) => [`stream ${b.stream}`, `R${b.replicas}` + (b.leader ? `, leader ${b.leader}` : "") +
      (b.not_current.length ? `, not current: ${b.not_current.join(", ")}` : "")]),
    ["waiting pulls", fmtInt(v.readers)], ["dead letters", fmtInt(v.dead_letters)], ["watermark", fmtTime(v.watermark_ms)],
  ];
  if (v.kind === "source") rows.splice(0, 2, ["out (arriving downstream)", fmtRate(v.rate)]);
  if (v.held !== null && v.held !== undefined) {
    const owners = Object.entries(v.partition_owners || {}).map(([r, ps]) => `${r}: ${ps.join(",") || "none"}`);
    rows.splice(4, 0, ["held in open windows", `${fmtInt(v.held)} in ${fmtInt(v.open_windows)} windows`],
                ["partitions", owners.length ? owners.join("; ") : "no live replica"]);
  }
  for (const [k, val] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = val;
  }
}

async function loadDetail(name) {
  const r = await fetch(`/api/vertex/${encodeURIComponent(name)}`);
  const d = await r.json();
  if (selected !== name) return;
  $("panel-name").textContent = d.name;
  $("panel-kind").textContent = d.kind + (d.buffer ? ` · buffer ${d.buffer}` : "");
  $("panel-spec").textContent = JSON.stringify({ ...d.spec, in: d.in, out: d.out, limits: d.limits }, null, 2);
  const list = $("panel-dead-letters");
  list.replaceChildren();
  const dl = d.deadLetters || { messages: [] };
  shownDeadLetters = dl.total === undefined ? null : dl.total;
  $("panel-dlq-total").textContent = dl.error ? dl.error : dl.total === null ? "(no dead-letter stream)" : `${fmtInt(dl.total)} in ${dl.stream}`;
  if (!dl.messages.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "none";
    list.appendChild(li);
  }
  for (const m of dl.messages) {
    const li = document.createElement("li");
    li.dataset.seq = m.seq;
    const head = document.createElement("div");
    head.className = "muted";
    head.textContent = `#${m.seq} · ${m.time ? m.time.slice(0, 23) + "Z" : ""}${m.id ? " · id " + m.id : ""}`;
    const error = document.createElement("div");
    error.className = "dl-error";
    error.textContent = m.error || "(no Nf-Error header)";
    const value = document.createElement("div");
    value.className = "dl-value";
    value.textContent = m.value;
    li.append(head, error, value);
    list.appendChild(li);
  }
}

function select(name) {
  selected = name;
  shownDeadLetters = null;
  for (const g of document.querySelectorAll("g.node")) g.classList.toggle("selected", g.dataset.vertex === name);
  $("panel").hidden = false;
  $("panel-name").textContent = name;
  fillLive(name);
  loadDetail(name);
}

async function poll() {
  try {
    const r = await fetch("/api/status");
    await update(await r.json());
  } catch (exc) {
    $("error").hidden = false;
    $("error").textContent = `natsflow ui server unreachable: ${exc}`;
  }
  setTimeout(poll, interval);
}

async function loadPipeline() {
  const r = await fetch("/api/pipeline");
  const p = await r.json();
  layout = p.layout;
  revision = p.revision;
  interval = Math.max(250, p.interval * 1000);
  document.title = `natsflow · ${p.pipeline}`;
  $("pipeline-name").textContent = p.pipeline;
  draw();
  document.body.dataset.revision = revision;
  if (selected) {
    const g = document.querySelector(`g.node[data-vertex="${CSS.escape(selected)}"]`);
    if (g) g.classList.add("selected");
  }
}

function closePanel() {
  selected = null;
  $("panel").hidden = true;
  for (const g of document.querySelectorAll("g.node")) g.classList.remove("selected");
}

async function main() {
  $("close").addEventListener("click", closePanel);
  await loadPipeline();
  document.body.dataset.ready = "1";
  poll();
}

main();
