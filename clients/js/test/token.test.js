// Tokens against a real Herald with HS256 auth: refresh before `exp` keeps the connection;
// a refresh that fails lets 4001 come and the reconnect takes a new token; a refused
// upgrade (401) is reported and not retried in a loop.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Herald } from "../src/herald.js";
import { startStack, stopStack, eventually, sleep, jwt } from "./support.js";

const SECRET = "herald-js-test-secret-0123456789abcdef";
let redis, herald, pub;
const clients = [];

before(async () => ({ redis, herald, pub } = await startStack({ jwtSecret: SECRET })));
after(() => stopStack({ redis, herald, pub }, clients));

const now = () => Math.floor(Date.now() / 1000);
const token = (sub, life) => jwt(SECRET, { sub, iat: now(), exp: now() + life, channels: ["t:*"] });

function record(c) {
  const r = { states: [], errors: [], refreshed: 0 };
  c.on("state", (s) => r.states.push(s));
  c.on("error", (e) => r.errors.push(e));
  c.on("refreshed", () => r.refreshed++);
  return r;
}

test("a token refreshed before expiry keeps the connection", async () => {
  let calls = 0;
  let firstExp;
  const c = new Herald(herald.url, {
    WebSocket,
    token: async () => {
      calls++;
      const t = token("u1", 3);
      firstExp ??= now() + 3;
      return t;
    },
  });
  clients.push(c);
  const r = record(c);
  const got = [];
  c.subscribe("t:1", (d) => got.push(d));
  const ready = new Promise((res) => c.on("subscribed", res));
  c.connect();
  await ready;

  await eventually(() => r.refreshed >= 2, { timeout: 12000, what: "two refreshes", describe: () => JSON.stringify(r) });
  await eventually(() => Date.now() > firstExp * 1000 + 1000, { timeout: 5000, what: "past the first token's exp" });
  await pub.command("PUBLISH", "t:1", '"still here"');
  await eventually(() => got.length === 1, { what: "a publication after the first token expired" });
  assert.deepEqual(r.states, ["connecting", "connected"], "never dropped");
  assert.deepEqual(r.errors, []);
  assert.ok(calls >= 3, `one token to connect and one per refresh (${calls})`);
  c.close();
});

test("a refresh the server refuses lets the token expire (4001); the reconnect takes a new token", async () => {
  let calls = 0;
  const c = new Herald(herald.url, {
    WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 500,
    // 1: a short token; 2: a refresh for another user, which Herald refuses; then good ones.
    token: () => (++calls === 1 ? token("u1", 2) : calls === 2 ? token("someone-else", 60) : token("u1", 60)),
  });
  clients.push(c);
  const r = record(c);
  const got = [];
  let subscribedCount = 0;
  c.on("subscribed", () => subscribedCount++);
  c.subscribe("t:2", (d) => got.push(d));
  c.connect();
  await eventually(() => r.states.filter((s) => s === "connected").length === 2, {
    timeout: 10000,
    what: "a second connection after 4001",
    describe: () => JSON.stringify(r),
  });
  // A refused refresh is retried a few seconds later; exp may come first or not.
  assert.ok(r.errors.length >= 1 && r.errors.every((e) => e.code === "forbidden"), `the refused refresh was reported: ${JSON.stringify(r.errors)}`);
  assert.ok(calls >= 3, `connect, refused refresh, new token after 4001 (${calls})`);
  assert.deepEqual(r.states, ["connecting", "connected", "disconnected", "connecting", "connected"]);
  await eventually(() => subscribedCount === 2, { what: "resubscribed on the new connection" });
  await pub.command("PUBLISH", "t:2", '"after"');
  await eventually(() => got.length === 1, { what: "delivery on the new connection" });
  c.close();
});

test("a 401 before the upgrade is reported and retried only after the long refusal delay", async () => {
  const c = new Herald(herald.url, { WebSocket, token: () => "not-a-jwt", minReconnectDelay: 50, refusedDelay: 60000 });
  clients.push(c);
  const r = record(c);
  c.connect();
  await eventually(() => r.errors.length > 0, { what: "an error event" });
  assert.equal(r.errors[0].code, 401);
  await sleep(1500);
  assert.deepEqual(r.states, ["connecting", "disconnected"], "no reconnect loop");
  c.close();
});
