// Delivery against a real Herald and redis-server: order, no duplicates, a lagging client
// made whole from history, unsubscribe.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { Herald } from "../src/herald.js";
import { startStack, stopStack, startHerald, eventually, metric } from "./support.js";

let redis, herald, pub;
const clients = [];

before(async () => ({ redis, herald, pub } = await startStack({ history: "h:*=5000/10m" })));
after(() => stopStack({ redis, herald, pub }, clients));

function client(url = herald.url, options = {}) {
  const c = new Herald(url, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 500, ...options });
  clients.push(c);
  return c;
}

const subscribed = (c, channel) =>
  new Promise((resolve) => {
    const off = c.on("subscribed", (e) => {
      if (e.channel === channel) {
        off();
        resolve(e);
      }
    });
  });

const range = (n) => Array.from({ length: n }, (_, i) => i);

test("publications arrive in order, once each, on history and plain channels (subscribed before connect)", async () => {
  const c = client();
  const history = [];
  const plain = [];
  c.subscribe("h:order", (data, meta) => history.push({ n: data.n, offset: meta.offset }));
  c.subscribe("p:order", (data, meta) => plain.push({ n: data.n, offset: meta.offset }));
  const ready = Promise.all([subscribed(c, "h:order"), subscribed(c, "p:order")]);
  c.connect();
  await ready;

  const N = 1000;
  const offsets = await Promise.all(
    range(N).flatMap((n) => [
      pub.command("FCALL", "herald_publish", 1, "h:order", JSON.stringify({ n })),
      pub.command("PUBLISH", "p:order", JSON.stringify({ n })),
    ]),
  ).then((replies) => replies.filter((_, i) => i % 2 === 0));

  await eventually(() => history.length >= N && plain.length >= N, {
    what: `${N} publications on each channel`,
    describe: () => `history ${history.length}, plain ${plain.length}`,
  });
  // A marker published last: once it is in, anything duplicated would be in too.
  const end = new Promise((r) => c.subscribe("h:order", (d) => d.end && r()));
  await pub.command("FCALL", "herald_publish", 1, "h:order", JSON.stringify({ end: true }));
  await end;

  assert.deepEqual(history.slice(0, N).map((m) => m.n), range(N));
  assert.deepEqual(history.slice(0, N).map((m) => m.offset), offsets, "offsets are the ones FCALL returned");
  assert.equal(history.length, N + 1, "nothing twice");
  assert.deepEqual(plain.map((m) => m.n), range(N));
  assert.ok(plain.every((m) => m.offset === null), "a plain channel carries no offset");
  c.close();
});

test("a client that lags on a history channel is made whole from history, transparently", async (t) => {
  // A Herald whose per-channel queue holds only 16 frames: a client that stops reading
  // falls behind by thousands and gets `lagged`.
  const small = await startHerald(redis, { history: "h:*=5000/10m", extra: ["--queue-capacity", "16"] });
  const dir = mkdtempSync(path.join(tmpdir(), "herald-js-lag-"));
  try {
    const c = client(small.url);
    const got = [];
    const lagged = [];
    const gaps = [];
    c.on("lagged", (e) => lagged.push(e));
    c.on("gap", (e) => gaps.push(e));
    c.subscribe("h:lag", (data) => got.push(data.n));
    const ready = subscribed(c, "h:lag");
    c.connect();
    await ready;
    // The first offset comes with the first message (Herald's `ok` carries none): a lag
    // before it could not be resumed. Take one first.
    await pub.command("FCALL", "herald_publish", 1, "h:lag", JSON.stringify({ n: 0 }));
    await eventually(() => got.length === 1, { what: "the first publication" });

    // 2,000 publications of 8 KiB (16 MB, more than loopback socket buffers hold), sent by
    // redis-cli from a file so they flow while this process is blocked and reads nothing.
    const N = 2000;
    const pad = "x".repeat(8192);
    const cmds = range(N).slice(1).map((n) => {
      const payload = JSON.stringify({ n, pad });
      return `*5\r\n$5\r\nFCALL\r\n$14\r\nherald_publish\r\n$1\r\n1\r\n$5\r\nh:lag\r\n$${Buffer.byteLength(payload)}\r\n${payload}\r\n`;
    });
    const file = path.join(dir, "cmds");
    writeFileSync(file, cmds.join(""));
    const cli = spawn("sh", ["-c", `redis-cli -p ${redis.port} --pipe < ${file}`], { stdio: "ignore" });
    const cliDone = new Promise((r) => cli.on("exit", r));
    const until = Date.now() + 2500;
    while (Date.now() < until); // block the event loop: the client reads nothing meanwhile

    assert.equal(await cliDone, 0, "redis-cli --pipe succeeded");
    await eventually(() => got.length >= N, { timeout: 20000, what: `${N} publications`, describe: () => `got ${got.length}, lagged ${JSON.stringify(lagged)}` });
    t.diagnostic(`lagged ${lagged.length} times, ${lagged.reduce((a, e) => a + e.missed, 0)} publications dropped by Herald and fetched back`);
    assert.ok(lagged.length > 0, "the client lagged (else this test proves nothing)");
    assert.ok(lagged.every((e) => e.recovering), "each lag was repaired from history");
    assert.deepEqual(gaps, []);
    assert.equal(got.length, N);
    assert.deepEqual(got, range(N));
    c.close();
  } finally {
    await small.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("unsubscribe stops delivery; the last handler of a channel unsubscribes it on the server", async () => {
  const c = client();
  const a = [];
  const b = [];
  const sentinel = [];
  const subA = c.subscribe("h:unsub", (d) => a.push(d.n));
  const subB = c.subscribe("h:unsub", (d) => b.push(d.n));
  c.subscribe("h:sentinel", (d) => sentinel.push(d.n));
  const ready = Promise.all([subscribed(c, "h:unsub"), subscribed(c, "h:sentinel")]);
  c.connect();
  await ready;

  const publish = (channel, n) => pub.command("FCALL", "herald_publish", 1, channel, JSON.stringify({ n }));
  await publish("h:unsub", 1);
  await eventually(() => a.length === 1 && b.length === 1, { what: "first publication to both handlers" });

  subA.unsubscribe();
  await publish("h:unsub", 2);
  await eventually(() => b.length === 2, { what: "second publication to the remaining handler" });
  assert.deepEqual(a, [1], "the unsubscribed handler got nothing more");

  subB.unsubscribe();
  // The server drops the channel: only h:sentinel is left for this connection.
  await eventually(async () => (await metric(herald.port, "herald_subscriptions")) === 1, {
    what: "herald_subscriptions 1 on the server",
  });
  await publish("h:unsub", 3);
  await publish("h:sentinel", 1);
  await eventually(() => sentinel.length === 1, { what: "the sentinel publication" });
  assert.deepEqual(a, [1]);
  assert.deepEqual(b, [1, 2]);
  c.close();
});
