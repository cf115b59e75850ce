// The client's side of the contract against a scripted server, for what a healthy Herald
// does not do on demand: resend an offset already delivered, go silent, answer out of turn.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket, { WebSocketServer } from "ws";
import { Herald } from "../src/herald.js";
import { eventually } from "./support.js";

const servers = [];
const clients = [];
after(() => {
  for (const c of clients) c.close();
  for (const s of servers) {
    for (const ws of s.clients) ws.terminate();
    s.close();
  }
});

const track = (c) => (clients.push(c), c);

/** A WebSocket server on a free port; `script(ws, frames)` plays the server's part. */
async function fakeHerald(script) {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
  servers.push(server);
  await new Promise((r) => server.on("listening", r));
  const connections = [];
  server.on("connection", (ws) => {
    const frames = [];
    connections.push(frames);
    ws.on("message", (raw) => frames.push(JSON.parse(raw)));
    ws.send(JSON.stringify({ op: "welcome", session: "s", heartbeat: 25, channels: [] }));
    script(ws, frames, connections.length);
  });
  return { url: `ws://127.0.0.1:${server.address().port}/ws`, connections };
}

const send = (ws, frame) => ws.send(JSON.stringify(frame));
const onFrame = (ws, op, fn) => ws.on("message", (raw) => {
  const f = JSON.parse(raw);
  if (f.op === op) fn(f);
});

test("an offset already seen is dropped: each publication reaches the handler once, in order", async () => {
  const { url } = await fakeHerald((ws) => {
    onFrame(ws, "subscribe", (f) => {
      send(ws, { op: "ok", id: f.id, channels: f.channels });
      // A replay overlapping what was delivered, as at a resume seam.
      for (const n of [1, 2, 2, 3, 1, 4, 3, 5]) send(ws, { op: "message", channel: "c", data: n, offset: `e:${n}` });
    });
  });
  const c = track(new Herald(url, { WebSocket }));
  const got = [];
  c.subscribe("c", (data, meta) => got.push([data, meta.offset]));
  c.connect();
  await eventually(() => got.length >= 5, { what: "five publications", describe: () => JSON.stringify(got) });
  await new Promise((r) => setTimeout(r, 100));
  c.close();
  assert.deepEqual(got, [1, 2, 3, 4, 5].map((n) => [n, `e:${n}`]));
});

test("`lagged` on a history channel: frames past the hole wait; unsubscribe, then subscribe with `since` from before it", async () => {
  const { url, connections } = await fakeHerald((ws) => {
    let subscribes = 0;
    onFrame(ws, "subscribe", (f) => {
      subscribes++;
      if (subscribes === 1) {
        send(ws, { op: "ok", id: f.id, channels: ["c"] });
        send(ws, { op: "message", channel: "c", data: 1, offset: "e:1" });
        send(ws, { op: "lagged", channel: "c", missed: 2 });
        send(ws, { op: "message", channel: "c", data: 4, offset: "e:4" }); // in flight before the unsubscribe lands
      } else {
        send(ws, { op: "ok", id: f.id, channels: ["c"], recovered: { c: true } });
        for (const n of [2, 3, 4, 5]) send(ws, { op: "message", channel: "c", data: n, offset: `e:${n}` });
      }
    });
    onFrame(ws, "unsubscribe", (f) => setTimeout(() => send(ws, { op: "ok", id: f.id, channels: [] }), 50));
  });
  const c = track(new Herald(url, { WebSocket }));
  const got = [];
  const lagged = [];
  c.on("lagged", (e) => lagged.push(e));
  c.subscribe("c", (data) => got.push(data));
  c.connect();
  await eventually(() => got.includes(5), { what: "publication 5", describe: () => JSON.stringify(got) });
  c.close();
  const ops = connections[0].map((f) => [f.op, f.since ?? null]);
  // The resume point is the last offset before the hole, not the frame that came after it.
  assert.deepEqual(ops, [["subscribe", null], ["unsubscribe", null], ["subscribe", { c: "e:1" }]]);
  assert.deepEqual(lagged, [{ channel: "c", missed: 2, recovering: true }]);
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
});

test("a resume answered `recovered:false` is reported as a gap", async () => {
  const { url } = await fakeHerald((ws, frames, nth) => {
    onFrame(ws, "subscribe", (f) => {
      if (nth === 1) {
        send(ws, { op: "ok", id: f.id, channels: ["c"] });
        send(ws, { op: "message", channel: "c", data: 1, offset: "e:1" });
        setTimeout(() => ws.terminate(), 50);
      } else {
        send(ws, { op: "ok", id: f.id, channels: ["c"], recovered: { c: false } });
      }
    });
  });
  const c = track(new Herald(url, { WebSocket, minReconnectDelay: 20, maxReconnectDelay: 50 }));
  const gaps = [];
  const sinces = [];
  c.on("gap", (e) => gaps.push(e.channel));
  c.on("subscribed", (e) => sinces.push(e.recovered));
  c.subscribe("c", () => {});
  c.connect();
  await eventually(() => gaps.length === 1, { what: "a gap" });
  c.close();
  assert.deepEqual(sinces, [undefined, false]);
});

test("liveness: silence after a `ping` counts as a dead socket and the client reconnects", async () => {
  // This server never answers a ping: the one a dead network would never deliver.
  const { url, connections } = await fakeHerald(() => {});
  const c = track(new Herald(url, { WebSocket, pingInterval: 100, pongTimeout: 100, minReconnectDelay: 20, maxReconnectDelay: 50 }));
  const errors = [];
  c.on("error", (e) => errors.push(e));
  c.connect();
  await eventually(() => connections.length >= 2, { what: "a second connection" });
  c.close();
  assert.deepEqual(connections[0].map((f) => f.op), ["ping"]);
  assert.equal(errors[0].code, "timeout");
});

test("a pong, or any frame, keeps the connection", async () => {
  const { url, connections } = await fakeHerald((ws) => onFrame(ws, "ping", () => send(ws, { op: "pong" })));
  const c = track(new Herald(url, { WebSocket, pingInterval: 50, pongTimeout: 100 }));
  c.connect();
  await eventually(() => (connections[0]?.length ?? 0) >= 5, { what: "five pings" });
  c.close();
  assert.equal(connections.length, 1);
});

test("`online` after a drop retries at once instead of waiting out the backoff", async () => {
  // Node has no window: stand one in for the `online` event the browser would fire.
  const win = new EventTarget();
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  try {
    const port = await (await import("./support.js")).freePort();
    const c = track(new Herald(`ws://127.0.0.1:${port}/ws`, { WebSocket, minReconnectDelay: 30000, maxReconnectDelay: 60000 }));
    const states = [];
    c.on("state", (s) => states.push(s));
    c.connect(); // nothing listens yet: the retry is scheduled 30-60 s out
    await eventually(() => states.includes("disconnected"), { what: "the failed first attempt" });
    const server = new WebSocketServer({ host: "127.0.0.1", port });
    servers.push(server);
    server.on("connection", (ws) => send(ws, { op: "welcome", session: "s", heartbeat: 25, channels: [] }));
    await new Promise((r) => server.on("listening", r));
    const t0 = Date.now();
    win.dispatchEvent(new Event("online"));
    await eventually(() => c.state === "connected", { timeout: 2000, what: "connected right after `online`" });
    assert.ok(Date.now() - t0 < 2000);
    c.close();
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});
