// Fixtures for the tests: a real redis-server and a real Herald on free loopback ports,
// killable and restartable on the same port; a tiny RESP client to publish; `eventually`.
// Nothing here sleeps to wait for a state it can observe: it polls with a bound and says
// what it last saw when the bound runs out.

import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const HERALD_BIN = process.env.HERALD_BIN ?? path.resolve(here, "../../../target/debug/herald");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function freePort() {
  const server = net.createServer();
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

/** Polls `check` until it returns a truthy value; fails with `describe()` after `timeout` ms. */
export async function eventually(check, { timeout = 10000, every = 20, what = "condition", describe } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const seen = describe ? describe() : last;
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last saw: ${typeof seen === "string" ? seen : JSON.stringify(seen)}`);
    }
    await sleep(every);
  }
}

/** GET over a fresh connection, closed after: fetch's pooled keep-alive socket would hold
 *  the test process open for seconds after the last test. Resolves to {status, body}. */
export function httpGet(url) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    req.on("error", reject);
    req.setTimeout(5000, () => req.destroy(new Error(`GET ${url} timed out`)));
  });
}

/** The value of an unlabelled metric on Herald's /metrics. */
export async function metric(port, name) {
  const { body } = await httpGet(`http://127.0.0.1:${port}/metrics`);
  const m = new RegExp(`^${name} (\\S+)$`, "m").exec(body);
  return m ? Number(m[1]) : undefined;
}

// ---- RESP -----------------------------------------------------------------------------

/** A minimal RESP2 client: enough for PING, FCALL and PUBLISH, pipelined. */
export class Resp {
  #sock;
  #buf = Buffer.alloc(0);
  #waiting = [];

  static async connect(port) {
    const r = new Resp();
    r.#sock = net.connect(port, "127.0.0.1");
    await new Promise((ok, fail) => {
      r.#sock.once("connect", ok);
      r.#sock.once("error", fail);
    });
    r.#sock.on("data", (d) => r.#onData(d));
    r.#sock.on("error", () => {});
    r.#sock.on("close", () => {
      for (const w of r.#waiting.splice(0)) w.fail(new Error("redis connection closed"));
    });
    return r;
  }

  command(...args) {
    const parts = [`*${args.length}\r\n`];
    for (const a of args) {
      const s = String(a);
      parts.push(`$${Buffer.byteLength(s)}\r\n${s}\r\n`);
    }
    return new Promise((ok, fail) => {
      this.#waiting.push({ ok, fail });
      this.#sock.write(parts.join(""));
    });
  }

  close() {
    this.#sock.destroy();
  }

  #onData(chunk) {
    this.#buf = Buffer.concat([this.#buf, chunk]);
    for (;;) {
      const parsed = parse(this.#buf, 0);
      if (!parsed) return;
      this.#buf = this.#buf.subarray(parsed.end);
      const w = this.#waiting.shift();
      if (parsed.value instanceof Error) w?.fail(parsed.value);
      else w?.ok(parsed.value);
    }
  }
}

function parse(buf, at) {
  const eol = buf.indexOf("\r\n", at);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[at]);
  const line = buf.toString("utf8", at + 1, eol);
  const next = eol + 2;
  switch (type) {
    case "+":
      return { value: line, end: next };
    case "-":
      return { value: new Error(line), end: next };
    case ":":
      return { value: Number(line), end: next };
    case "$": {
      const n = Number(line);
      if (n < 0) return { value: null, end: next };
      if (buf.length < next + n + 2) return null;
      return { value: buf.toString("utf8", next, next + n), end: next + n + 2 };
    }
    case "*": {
      const n = Number(line);
      const items = [];
      let end = next;
      for (let i = 0; i < n; i++) {
        const item = parse(buf, end);
        if (!item) return null;
        items.push(item.value);
        end = item.end;
      }
      return { value: n < 0 ? null : items, end };
    }
    default:
      throw new Error(`bad RESP type ${type}`);
  }
}

// ---- processes ------------------------------------------------------------------------

function spawnLogged(cmd, args, name) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  const log = [];
  const keep = (d) => {
    log.push(d.toString());
    if (log.length > 200) log.shift();
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.log = () => `${name} output:\n${log.join("").slice(-4000)}`;
  return child;
}

async function killAndWait(child, signal) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once("exit", r));
  child.kill(signal);
  let timer;
  await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 5000)))]);
  clearTimeout(timer); // a pending timer would keep the test process alive
}

/** redis-server without persistence on a free port; `restart()` loses everything. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "herald-js-redis-"));
  const redis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    child: null,
    async start() {
      this.child = spawnLogged("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], "redis");
      await eventually(async () => {
        const r = await Resp.connect(port);
        try {
          return (await r.command("PING")) === "PONG";
        } finally {
          r.close();
        }
      }, { timeout: 10000, what: `redis-server on ${port}`, describe: () => this.child.log() });
    },
    async kill() {
      await killAndWait(this.child, "SIGKILL");
    },
    async restart() {
      await this.kill();
      await this.start();
    },
    async stop() {
      await this.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await redis.start();
  return redis;
}

/** Herald on a free port; `kill()` is SIGKILL, `start()` again reuses the same port. */
export async function startHerald(redis, { history = "", jwtSecret, extra = [] } = {}) {
  if (!existsSync(HERALD_BIN)) {
    throw new Error(`no Herald binary at ${HERALD_BIN}: build it (cargo build) or set HERALD_BIN`);
  }
  const port = await freePort();
  const args = ["--listen", `127.0.0.1:${port}`, "--redis-url", redis.url, "--drain-period", "0s", ...extra];
  if (history) args.push("--history", history);
  if (jwtSecret) args.push("--jwt-secret", jwtSecret);
  const herald = {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    child: null,
    async start() {
      this.child = spawnLogged(HERALD_BIN, args, "herald");
      await eventually(async () => (await httpGet(`http://127.0.0.1:${port}/readyz`)).status === 200, {
        timeout: 15000,
        what: `Herald ready on ${port}`,
        describe: () => this.child.log(),
      });
    },
    async kill() {
      await killAndWait(this.child, "SIGKILL");
    },
    async stop() {
      await killAndWait(this.child, "SIGKILL");
    },
  };
  await herald.start();
  return herald;
}

// ---- tokens ---------------------------------------------------------------------------

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 JWT. */
export function jwt(secret, claims) {
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url(claims);
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

// ---- chromium ---------------------------------------------------------------------------

/** Debian's chromium, installed with apt-get when missing (no downloaded browser build). */
export function ensureChromium() {
  const bin = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (existsSync(bin)) return bin;
  const sudo = process.getuid?.() === 0 ? [] : ["sudo"];
  const run = (args) => execFileSync(sudo.length ? "sudo" : args[0], sudo.length ? args : args.slice(1), { stdio: "inherit", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
  run(["apt-get", "update"]);
  run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"]);
  return bin;
}

/** A redis-server, a Herald on it (`startHerald`'s options) and a publisher connection. */
export async function startStack(heraldOptions) {
  const redis = await startRedis();
  const herald = await startHerald(redis, heraldOptions);
  const pub = await Resp.connect(redis.port);
  return { redis, herald, pub };
}

/** Closes `clients`, then what `startStack` started (any part may be missing). */
export async function stopStack({ redis, herald, pub } = {}, clients = []) {
  for (const c of clients) c.close();
  pub?.close();
  await herald?.stop();
  await redis?.stop();
}
