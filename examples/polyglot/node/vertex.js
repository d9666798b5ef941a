// A natsflow UDF vertex in Node.js, written from docs/protocol.md with the `nats` package only.
// It runs the `shout` function (see ../shout.py for its definition, the same in every language).
import { createHash } from "node:crypto";
import { connect, headers as newHeaders } from "nats";

const desc = JSON.parse(process.env.NATSFLOW_DESCRIPTOR);
const H = desc.headers; // names of the envelope headers (§3)
const RESERVED = new Set([H.msgId, H.id, H.keys, H.eventTime]);
const DROP = "__drop__";

// ---- the function -------------------------------------------------------------------------
function shout(keys, value) {
  if (value.length === 0) return [];
  const upper = Uint8Array.from(value, (c) => (c >= 97 && c <= 122 ? c - 32 : c));
  const out = [{ value: upper, keys, tags: [value.length % 2 === 0 ? "even" : "odd"] }];
  if (value.length > 12) out.push({ value: new TextEncoder().encode(String(value.length)), keys, tags: ["long"] });
  return out;
}

// ---- protocol -----------------------------------------------------------------------------
// §5: outputs are named after the input's own Nats-Msg-Id (stable when it is stored again).
function origin(m) {
  const id = m.headers?.get(H.msgId) || `seq:${m.seq}`;
  return createHash("sha256").update(id, "utf8").digest("hex").slice(0, 24);
}

// When JetStream stored a delivered message, in epoch ms, exactly: from its ack subject's
// nanosecond token (`m.info.timestampNanos` is a float, which can round up into the next ms).
function storedMs(m) {
  const t = m.reply.split(".");
  return String(BigInt(t[t.length === 9 ? 7 : 9]) / 1000000n);
}

function decodeKeys(raw) {
  if (raw === "" || raw === undefined || raw === null) return [];
  const keys = JSON.parse(raw); // throws on bad JSON: a bad message (§3)
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === "string")) {
    throw new Error(`${H.keys} must be a JSON array of strings, got ${raw}`);
  }
  return keys;
}

function matches(tagsCond, tags) {
  if (!tagsCond) return true;
  const have = new Set(tags);
  const hits = tagsCond.values.filter((t) => have.has(t)).length;
  if (tagsCond.operator === "and") return hits === tagsCond.values.length;
  if (tagsCond.operator === "not") return hits === 0;
  return hits > 0; // "or"
}

class Gate {
  // Back pressure (§7): an estimate of each out-buffer's size, refreshed from the server when it
  // reaches the soft limit or is older than a second.
  constructor(jsm, out) {
    this.jsm = jsm;
    this.out = out;
    this.count = 0;
    this.at = 0;
  }
  async refresh() {
    const info = await this.jsm.streams.info(this.out.stream);
    this.count = info.state.messages;
    this.at = Date.now();
  }
  async room(n, stopping) {
    for (;;) {
      if (this.count + n > this.out.softLimit || Date.now() - this.at > 1000) await this.refresh();
      if (this.count + n <= this.out.softLimit) return true;
      if (this.out.onFull === "discardLatest") return false;
      if (stopping() && Date.now() - stopping() > 1000 * graceSeconds()) throw new Error("stopping while the buffer is full");
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function graceSeconds() {
  return Number(process.env.NATSFLOW_GRACE_SECONDS || 30);
}

function outputHeaders(input, data) {
  const h = newHeaders();
  for (const [k, v] of input.userHeaders) h.set(k, v);
  h.set(H.msgId, data.msgId);
  h.set(H.id, data.id);
  h.set(H.eventTime, input.eventTime);
  if (data.keys.length) h.set(H.keys, JSON.stringify(data.keys));
  return h;
}

// A publish whose refusal is caught at once: one still pending while the batch awaits room in
// another buffer would otherwise reject unhandled, which ends a Node.js process.
function publish(js, subject, value, opts) {
  return js.publish(subject, value, opts).then(() => null, (err) => err);
}

async function processBatch(js, gates, msgs, stopping) {
  const publishes = [];
  const perGate = new Map();
  const dead = [];
  for (const m of msgs) {
    const from = origin(m);
    const hdrs = m.headers;
    const userHeaders = [];
    if (hdrs) for (const k of hdrs.keys()) if (!RESERVED.has(k) && !k.startsWith("Nats-")) userHeaders.push([k, hdrs.get(k)]);
    // Missing envelope headers are taken from what a redelivery keeps (§3): the store time, the msg id or sequence.
    const stored = storedMs(m);
    const input = { id: hdrs?.get(H.id) || hdrs?.get(H.msgId) || `seq:${m.seq}`, eventTime: hdrs?.get(H.eventTime) || stored,
      userHeaders };
    let keys;
    try {
      keys = decodeKeys(hdrs?.get(H.keys));
    } catch (err) {
      dead.push({ m, from, error: `bad envelope: ${err.message}` });
      continue;
    }
    shout(keys, m.data).forEach((o, i) => {
      if (o.tags.includes(DROP)) return;
      const msgId = `${desc.vertex}:${from}:${i}`;
      const data = { msgId, id: i === 0 ? input.id : msgId, keys: o.keys };
      for (const [g, gate] of gates.entries()) {
        if (!matches(gate.out.tags, o.tags)) continue;
        if (!perGate.has(g)) perGate.set(g, []);
        perGate.get(g).push({ value: o.value, headers: outputHeaders(input, data), msgId: data.msgId });
      }
    });
  }
  for (const [g, list] of perGate.entries()) {
    const gate = gates[g];
    if (!(await gate.room(list.length, stopping))) continue; // discardLatest: dropped, counted in logs
    gate.count += list.length;
    for (const o of list) publishes.push(publish(js, gate.out.subject, o.value, { msgID: o.msgId, headers: o.headers }));
  }
  for (const d of dead) {
    const h = newHeaders();
    if (d.m.headers) for (const k of d.m.headers.keys()) if (k !== H.msgId) h.set(k, d.m.headers.get(k));
    h.set(H.error, d.error);
    h.set("Nf-Error-Vertex", desc.vertex);
    publishes.push(publish(js, desc.input.deadLetterSubject, d.m.data, { msgID: `dlq:${desc.vertex}:${d.from}`, headers: h }));
  }
  // every output stored (a duplicate counts as stored) ...
  const refused = (await Promise.all(publishes)).find((err) => err !== null);
  if (refused) throw refused;
  for (const m of msgs) m.ack(); // ... before any input is acked (§4)
}

async function main() {
  // NATS_URL is the only place the server is named (§2): no default to guess.
  if (!process.env.NATS_URL) throw new Error("NATS_URL is not set");
  const opts = { servers: process.env.NATS_URL.split(","), name: `natsflow-${desc.pipeline}-${desc.vertex}`,
    maxReconnectAttempts: -1 }; // ride out NATS outages like the Python and Go vertices // the name `natsflow ui` counts replicas by (§8)
  if (process.env.NATS_TOKEN) opts.token = process.env.NATS_TOKEN;
  if (process.env.NATS_USER) Object.assign(opts, { user: process.env.NATS_USER, pass: process.env.NATS_PASSWORD });
  const nc = await connect(opts);
  const js = nc.jetstream();
  const jsm = await nc.jetstreamManager();
  const consumer = await js.consumers.get(desc.input.stream, desc.input.consumer);
  const gates = desc.outputs.map((out) => new Gate(jsm, out));

  let stopAt = 0;
  const stopping = () => stopAt;
  let current = null;
  for (const sig of ["SIGTERM", "SIGINT"]) {
    process.on(sig, () => {
      stopAt = stopAt || Date.now();
      if (current) current.stop(); // stop pulling; messages already fetched are finished below
    });
  }
  console.log(`${desc.vertex} (node) started: reading ${desc.input.stream}`);
  while (!stopAt) {
    current = await consumer.fetch({ max_messages: desc.limits.readBatchSize, expires: desc.limits.readTimeoutMs });
    const msgs = [];
    for await (const m of current) msgs.push(m);
    if (msgs.length) {
      // Long batches keep their inputs with +WPI every ackWait/3 (§4.5).
      const keepAlive = setInterval(() => msgs.forEach((m) => m.working()), desc.limits.ackWaitMs / 3);
      try {
        await processBatch(js, gates, msgs, stopping);
      } catch (err) {
        // Nothing is acked: hand the batch back so it is redelivered at once (§4.6).
        console.error(`batch failed, handing ${msgs.length} messages back: ${err.message}`);
        msgs.forEach((m) => m.nak());
      } finally {
        clearInterval(keepAlive);
      }
    }
  }
  await nc.drain();
  process.exit(0);
}

main().catch((err) => {
  console.error(`vertex failed: ${err.stack || err}`);
  process.exit(1);
});
