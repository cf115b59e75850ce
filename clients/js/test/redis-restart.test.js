// Redis restarted without persistence loses every channel's history: the client must say
// `gap`, both when it stayed connected (Herald's own gap-fill cannot cover the loss) and
// when it resumes with an offset from before (`recovered:false`).

import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Herald } from "../src/herald.js";
import { startRedis, startHerald, Resp, eventually } from "./support.js";

let redis, herald, c;
after(async () => {
  c?.close();
  await herald?.stop();
  await redis?.stop();
});

/** FCALL on a fresh connection; retried while Herald has not reloaded its function yet. */
async function publish(channel, data) {
  return eventually(
    async () => {
      const r = await Resp.connect(redis.port);
      try {
        return await r.command("FCALL", "herald_publish", 1, channel, JSON.stringify(data));
      } finally {
        r.close();
      }
    },
    { timeout: 15000, what: `FCALL herald_publish on ${channel}` },
  );
}

test("a Redis restart without persistence gives `gap`, then delivery goes on", async () => {
  redis = await startRedis();
  herald = await startHerald(redis, {
    history: "h:*=5000/10m",
    extra: ["--redis-backoff-base", "50ms", "--redis-backoff-max", "300ms", "--redis-probe-interval", "1s"],
  });
  c = new Herald(herald.url, { WebSocket, minReconnectDelay: 50, maxReconnectDelay: 500 });
  const got = [];
  const gaps = [];
  const recovered = [];
  c.on("gap", (e) => gaps.push(e.channel));
  c.on("subscribed", (e) => recovered.push(e.recovered));
  c.subscribe("h:r", (data) => got.push(data.n));
  const ready = new Promise((r) => c.on("subscribed", (e) => e.channel === "h:r" && r()));
  c.connect();
  await ready;

  for (let n = 0; n < 10; n++) await publish("h:r", { n });
  await eventually(() => got.length === 10, { what: "10 publications before the restart" });

  // 1. Connected through the restart: Herald finds the history gone and sends `gap`.
  await redis.restart();
  await eventually(() => gaps.length >= 1, { timeout: 20000, what: "gap after the Redis restart", describe: () => herald.child.log() });
  assert.deepEqual(gaps, ["h:r"]);
  assert.equal(c.state, "connected", "the client stayed connected");
  for (let n = 10; n < 20; n++) await publish("h:r", { n });
  await eventually(() => got.length === 20, { what: "publications after the restart (new epoch, not taken for duplicates)", describe: () => JSON.stringify(got) });
  assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => i));

  // 2. Away during the restart: the resume from the old offset gets recovered:false.
  c.close();
  await redis.restart();
  await publish("h:r", { n: 20 }); // a new epoch that cannot reach back to our offset
  const resumed = new Promise((r) => c.on("subscribed", (e) => e.channel === "h:r" && r(e)));
  c.connect();
  const e = await resumed;
  assert.equal(e.recovered, false, "the resume was refused");
  assert.deepEqual(gaps, ["h:r", "h:r"], "and reported as a gap");
  await publish("h:r", { n: 21 });
  await eventually(() => got.length === 21, { what: "live delivery after the refused resume", describe: () => JSON.stringify(got) });
  assert.equal(got.at(-1), 21);
});
