// Herald SIGKILLed and restarted on the same port in the middle of 2,000 publications:
// the handler sees every one exactly once, in order, with no `gap`.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Herald } from "../src/herald.js";
import { startStack, stopStack, eventually, sleep } from "./support.js";

let redis, herald, pub, c;
after(() => stopStack({ redis, herald, pub }, [c].filter(Boolean)));

test("Herald killed and restarted during 2,000 publications: each delivered once, in order", async (t) => {
  ({ redis, herald, pub } = await startStack({ history: "h:*=5000/10m" }));

  c = new Herald(herald.url, { WebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000 });
  const got = [];
  const late = [];
  const states = [];
  const gaps = [];
  c.on("state", (s) => states.push(s));
  c.on("gap", (e) => gaps.push(e));
  const resumes = [];
  c.on("subscribed", (e) => e.channel === "h:restart" && resumes.push(e.recovered));
  let downAt;
  let upAt;
  c.on("state", (s) => {
    if (s === "disconnected") downAt ??= Date.now();
    if (s === "connected" && downAt) upAt ??= Date.now();
  });
  c.subscribe("h:restart", (data) => got.push(data.n));
  const ready = new Promise((r) => c.on("subscribed", (e) => e.channel === "h:restart" && r()));
  c.connect();
  await ready;

  const N = 2000;
  const BATCH = 20;
  let restarted;
  let killedAt = null;
  const started = Date.now();
  for (let i = 0; i < N; i += BATCH) {
    await Promise.all(
      Array.from({ length: BATCH }, (_, k) => pub.command("FCALL", "herald_publish", 1, "h:restart", JSON.stringify({ n: i + k }))),
    );
    if (i === 600) {
      await herald.kill();
      killedAt = got.length;
      // Subscribed during the outage: takes effect on the reconnect.
      c.subscribe("h:late", (data) => late.push(data.n));
      restarted = sleep(700).then(() => herald.start());
    }
    await sleep(25);
  }
  const publishMs = Date.now() - started;
  await restarted;
  await eventually(() => got.length >= N, { timeout: 20000, what: `${N} publications`, describe: () => `got ${got.length}, states ${states.join(",")}` });
  await eventually(() => c.state === "connected", { what: "connected again" });
  await pub.command("FCALL", "herald_publish", 1, "h:late", JSON.stringify({ n: 1 }));
  await eventually(() => late.length === 1, { what: "the publication on the channel subscribed during the outage" });

  t.diagnostic(`killed after ${killedAt} received; client down ${upAt - downAt} ms; ${publishMs} ms of publishing; states ${states.join(",")}`);
  assert.deepEqual(resumes, [undefined, true], "the reconnect resumed from history");
  assert.ok(killedAt < N, `the kill came mid-stream (after ${killedAt} received, ${publishMs} ms of publishing)`);
  assert.ok(states.includes("disconnected"), `the client saw the outage: ${states.join(",")}`);
  assert.deepEqual(gaps, [], "history covered the outage");
  assert.equal(got.length, N, "nothing twice");
  assert.deepEqual(got, Array.from({ length: N }, (_, i) => i), "in order");
});

test("a drop before the first publication loses nothing: the `ok`'s offset is the resume point", async () => {
  // A stack of its own: the test above leaves its Herald as it was.
  const stack = await startStack({ history: "h:*=5000/10m" });
  const quiet = new Herald(stack.herald.url, { WebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000 });
  try {
    const got = [];
    const gaps = [];
    const resumes = [];
    quiet.on("gap", (e) => gaps.push(e));
    quiet.on("subscribed", (e) => resumes.push(e.recovered));
    quiet.subscribe("h:quiet", (data) => got.push(data.n));
    const ready = new Promise((r) => quiet.on("subscribed", () => r()));
    quiet.connect();
    await ready;
    // Nothing was ever published here; Herald goes away and three are published meanwhile.
    await stack.herald.kill();
    for (const n of [1, 2, 3]) {
      await stack.pub.command("FCALL", "herald_publish", 1, "h:quiet", JSON.stringify({ n }));
    }
    await stack.herald.start();
    await eventually(() => got.length >= 3, { timeout: 15000, what: "the three published during the outage", describe: () => `got ${got}` });
    assert.deepEqual(got, [1, 2, 3]);
    assert.deepEqual(resumes, [undefined, true], "the reconnect resumed from the ok's offset");
    assert.deepEqual(gaps, []);
  } finally {
    quiet.close();
    await stopStack(stack);
  }
});
