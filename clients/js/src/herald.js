// herald-client: the JavaScript client for Herald, wire contract 1.1.
//
// One file, no dependencies, an ES module for browsers (<script type="module">) and
// Node 20+ (pass a WebSocket constructor, e.g. from the `ws` package).
//
// What it adds over a raw WebSocket, and the failure each part handles:
// - reconnect with full-jitter exponential backoff, at once when the browser comes back
//   online or a hidden tab is shown (centrifuge-js#203: a minute to notice a network change);
// - resume: every history channel is resubscribed with `since` = the last offset received,
//   and `gap` is reported where Herald answers `recovered:false`;
// - `lagged` on a history channel is repaired by unsubscribe + subscribe with `since`;
// - liveness by the `ping` op: a browser cannot see WebSocket pings, so a socket killed by
//   a sleeping laptop or a NAT would otherwise look open until TCP gives up;
// - token refresh before `exp`, a new token after close 4001, and a long backoff (with an
//   `error` event) when the server refuses the upgrade with 401/403;
// - handlers see each publication once and in order: an offset already seen is dropped.

const CLOSE_TOKEN_EXPIRED = 4001;
const CLOSE_DISCONNECTED = 4003;
// Herald refuses a subscribe naming more channels than HERALD_MAX_CHANNELS_PER_REQUEST
// (default 100) with bad_request, so resubscribe in batches of at most this many.
const BATCH = 100;
// How many recent offsets each channel remembers for the duplicate check. A duplicate can
// only come from a replay that starts at our last offset and overlaps what was still in
// flight, so a short window is enough; it bounds memory on long-lived channels.
const SEEN_WINDOW = 1024;
// setTimeout fires at once for delays above 2^31-1 ms (about 24.8 days).
const MAX_TIMER = 2 ** 31 - 1;

const DEFAULTS = {
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  refusedDelay: 60000, // after 401/403 before the upgrade: retrying sooner cannot help
  timeout: 10000, // until `welcome`, and for each reply; Herald's history wait is 5 s
  pingInterval: 15000, // silence before a `ping`; 0 turns liveness checks off
  pongTimeout: 5000, // silence after a `ping` before the socket counts as dead
};

export class Herald {
  #url;
  #opts;
  #WebSocket;
  /** channel name -> {handlers, offset, seen, active, resyncing} */
  #channels = new Map();
  #listeners = new Map();
  #ws = null;
  #state = "disconnected";
  #wanted = false; // connect() called and close() not since
  #generation = 0; // bumped per open attempt; stale async work compares and gives up
  #attempt = 0;
  #nextId = 1;
  #pending = new Map(); // request id -> reply callback, for the current socket only
  #timers = {};
  #token = null;
  #tokenAt = 0; // Date.now() when #token was obtained
  #tokenStale = false;
  #offNetwork = null;
  #lastFrameAt = 0;

  /**
   * @param {string} url ws:// or wss:// URL of Herald's /ws (relative in a page is fine)
   * @param {object} [options] see herald.d.ts
   */
  constructor(url, options = {}) {
    this.#url = url;
    this.#opts = { ...DEFAULTS, ...options };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("herald-client: no WebSocket here; pass options.WebSocket (e.g. from 'ws')");
    }
  }

  /** "connecting" | "connected" | "disconnected" */
  get state() {
    return this.#state;
  }

  on(event, fn) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this.#listeners.get(event)?.delete(fn);
  }

  /** Works in any state: what is subscribed while disconnected is sent on connect. */
  subscribe(channel, handler) {
    let ch = this.#channels.get(channel);
    if (!ch) {
      ch = { handlers: new Set(), offset: null, seen: new Set(), active: false, resyncing: false };
      this.#channels.set(channel, ch);
      if (this.#state === "connected") this.#subscribeBatch([channel]);
    }
    const entry = { handler };
    ch.handlers.add(entry);
    return {
      channel,
      unsubscribe: () => {
        if (!ch.handlers.delete(entry) || ch.handlers.size > 0) return;
        // The last handler is gone: forget the channel, offset included, so a later
        // subscribe starts live instead of resuming from a stale point.
        if (this.#channels.get(channel) === ch) this.#channels.delete(channel);
        if (this.#state === "connected") this.#send({ op: "unsubscribe", channels: [channel] });
      },
    };
  }

  connect() {
    if (this.#wanted) return;
    this.#wanted = true;
    this.#listenToNetwork();
    this.#open();
  }

  /** Closes for good (until connect() again). Subscriptions and offsets are kept. */
  close() {
    this.#wanted = false;
    this.#generation++;
    this.#offNetwork?.();
    this.#offNetwork = null;
    this.#drop();
    this.#clearTimer("retry");
    this.#setState("disconnected");
  }

  // ---- connection ----------------------------------------------------------------------

  async #open() {
    this.#clearTimer("retry");
    if (!this.#wanted || this.#ws) return;
    const generation = ++this.#generation;
    this.#setState("connecting");
    let token;
    try {
      token = await this.#currentToken();
    } catch (e) {
      if (generation !== this.#generation) return;
      this.#emit("error", { code: "token", message: String(e?.message ?? e) });
      this.#reconnectLater();
      return;
    }
    if (generation !== this.#generation || !this.#wanted) return;

    let ws;
    try {
      const url = new URL(this.#url, globalThis.location?.href);
      if (url.protocol === "http:") url.protocol = "ws:";
      if (url.protocol === "https:") url.protocol = "wss:";
      if (token) url.searchParams.set("token", token); // browsers cannot set Authorization
      ws = new this.#WebSocket(url.href);
    } catch (e) {
      this.#emit("error", { code: "connect", message: String(e?.message ?? e) });
      this.#reconnectLater();
      return;
    }
    this.#ws = ws;
    let refusal = null;
    ws.onmessage = (e) => this.#onFrame(ws, e.data);
    ws.onerror = (e) => {
      refusal = refusedStatus(e);
    };
    ws.onclose = (e) => this.#onClose(ws, e.code, e.reason, refusal);
    // A socket can hang in CONNECTING (a half-open network) or open without a welcome.
    this.#setTimer("connect", this.#opts.timeout, () => this.#fail(ws, "no welcome in time"));
  }

  #onClose(ws, code, reason, refusal) {
    if (ws !== this.#ws) return;
    const welcomed = this.#state === "connected";
    this.#drop();
    if (!this.#wanted) return;
    if (code === CLOSE_DISCONNECTED) {
      // The server API disconnected this user (logout, ban): reconnecting with the same
      // credentials would be refused or undo the operator's intent. Stay down.
      this.#wanted = false;
      this.#offNetwork?.();
      this.#setState("disconnected");
      this.#emit("error", { code, message: reason || "disconnected" });
      return;
    }
    this.#setState("disconnected");
    if (code === CLOSE_TOKEN_EXPIRED) {
      this.#tokenStale = true;
      this.#attempt = 0; // a new token fixes it: come back at the shortest delay
      this.#reconnectLater();
      return;
    }
    if (refusal === 401 || refusal === 403) {
      // Refused before the upgrade: the same request will be refused again, so report it
      // and wait long. A 401 may be an expired token: fetch a new one next time.
      this.#tokenStale = true;
      this.#emit("error", { code: refusal, message: `connection refused with HTTP ${refusal}` });
      const d = this.#opts.refusedDelay;
      this.#reconnectLater(d / 2 + Math.random() * (d / 2));
      return;
    }
    // A browser hides the refusal status: a failed open looks the same whatever the cause.
    // The one refusal we can guess is an expired token, so fetch a new one in that case.
    if (!welcomed && this.#token && tokenTimeLeft(this.#token, this.#tokenAt) <= 0) {
      this.#tokenStale = true;
    }
    this.#reconnectLater();
  }

  /** Gives up on a socket that is still open but useless (no welcome, no pong, no reply). */
  #fail(ws, why) {
    if (ws !== this.#ws) return;
    this.#drop();
    this.#emit("error", { code: "timeout", message: why });
    this.#setState("disconnected");
    this.#reconnectLater();
  }

  /** Detaches and closes the current socket without waiting for its close event: on a
   *  dead network the close handshake itself can hang for minutes. */
  #drop() {
    const ws = this.#ws;
    this.#ws = null;
    for (const name of Object.keys(this.#timers)) if (name !== "retry") this.#clearTimer(name);
    this.#pending.clear();
    for (const ch of this.#channels.values()) ch.active = ch.resyncing = false;
    if (!ws) return;
    // No-ops, not null: the `ws` package throws on an 'error' event nobody listens to.
    ws.onmessage = ws.onerror = ws.onclose = () => {};
    try {
      ws.close(1000);
    } catch {
      // already closing or closed
    }
  }

  #reconnectLater(delay) {
    if (!this.#wanted) return;
    if (delay === undefined) {
      // Full jitter: spread a crowd that lost the same server over the whole window, so a
      // restarted instance is not hit by every client at once.
      const { minReconnectDelay: min, maxReconnectDelay: max } = this.#opts;
      const cap = Math.min(max, min * 2 ** Math.min(this.#attempt + 1, 30));
      delay = min + Math.random() * (cap - min);
      this.#attempt++;
    }
    this.#setTimer("retry", delay, () => this.#open());
  }

  /** `online`, or a hidden tab shown again: a retry waiting out its backoff goes now, and a
   *  socket that looks connected is probed at once (it may have died while asleep). */
  #listenToNetwork() {
    const handler = () => {
      if (!this.#wanted) return;
      if (globalThis.document?.visibilityState === "hidden") return;
      if (this.#state === "connected") this.#probe();
      else if (this.#timers.retry) {
        this.#attempt = 0;
        this.#open();
      }
    };
    globalThis.addEventListener?.("online", handler);
    globalThis.document?.addEventListener?.("visibilitychange", handler);
    this.#offNetwork = () => {
      globalThis.removeEventListener?.("online", handler);
      globalThis.document?.removeEventListener?.("visibilitychange", handler);
    };
  }

  // ---- frames --------------------------------------------------------------------------

  #onFrame(ws, raw) {
    if (ws !== this.#ws) return;
    // Any frame proves the socket alive, a pong or not (centrifuge-js#423: after sleep,
    // data queued ahead of the pong must not let the pong timer kill the connection).
    this.#lastFrameAt = Date.now();
    if (this.#timers.pong) this.#clearTimer("pong");
    let f;
    try {
      f = JSON.parse(raw);
    } catch {
      return; // not ours to judge; the contract promises JSON
    }
    if (f.id != null && this.#pending.has(f.id)) {
      const reply = this.#pending.get(f.id);
      this.#pending.delete(f.id);
      reply(f);
      return;
    }
    switch (f.op) {
      case "welcome":
        this.#takeOffsets(f.offsets);
        return this.#onWelcome();
      case "message":
        return this.#onMessage(f);
      case "lagged":
        return this.#onLagged(f);
      case "gap":
        return this.#emit("gap", { channel: f.channel });
      case "error":
        // Without an id: e.g. Redis refused a channel the connection held (an ACL).
        return this.#emit("error", { code: f.code, message: f.message });
      default:
        return; // ops from a newer contract are ignored, as the contract asks
    }
  }

  #onWelcome() {
    this.#clearTimer("connect");
    this.#attempt = 0;
    this.#setState("connected");
    this.#watchIdle();
    this.#scheduleRefresh();
    const names = [...this.#channels.keys()];
    for (let i = 0; i < names.length; i += BATCH) this.#subscribeBatch(names.slice(i, i + BATCH));
  }

  #onMessage(f) {
    const ch = this.#channels.get(f.channel);
    if (!ch) return; // unsubscribed while it was in flight
    // Between `lagged` and the resubscribe's `ok`, live frames come from beyond the hole;
    // delivering them would move our offset past it. The replay brings them back in order.
    if (ch.resyncing) return;
    if (typeof f.offset === "string") {
      if (ch.seen.has(f.offset)) return; // a replay overlapping what we already have
      ch.seen.add(f.offset);
      if (ch.seen.size > SEEN_WINDOW) ch.seen.delete(ch.seen.values().next().value);
      ch.offset = f.offset;
    }
    const meta = { channel: f.channel, offset: f.offset ?? null };
    if (f.encoding) meta.encoding = f.encoding;
    for (const { handler } of [...ch.handlers]) {
      try {
        handler(f.data, meta);
      } catch (e) {
        // One faulty handler must not stop delivery to the others or kill the socket.
        this.#emit("error", { code: "handler", message: String(e?.message ?? e), error: e });
      }
    }
  }

  #onLagged(f) {
    const ch = this.#channels.get(f.channel);
    const recovering = Boolean(ch?.offset);
    this.#emit("lagged", { channel: f.channel, missed: f.missed, recovering });
    // Already resyncing: this is the old subscription's news, which the replay covers.
    if (!recovering || ch.resyncing) return;
    // `lagged` arrives where the drop happened, so our last offset is the resume point.
    // Freeze it (#onMessage drops what follows until the replay), unsubscribe, and only on
    // the unsubscribe's `ok` subscribe again with `since`: nothing of the old subscription
    // can then arrive after the replay has begun.
    ch.resyncing = true;
    const ws = this.#ws;
    this.#request({ op: "unsubscribe", channels: [f.channel] }, () => {
      if (ws === this.#ws && this.#channels.get(f.channel) === ch) this.#subscribeBatch([f.channel]);
    });
  }

  /** Subscribes `names`, each history channel with `since` its last offset. */
  #subscribeBatch(names) {
    const since = {};
    for (const name of names) {
      const offset = this.#channels.get(name)?.offset;
      if (offset) since[name] = offset;
    }
    const frame = { op: "subscribe", channels: names };
    if (Object.keys(since).length) frame.since = since;
    this.#request(frame, (reply) => {
      if (reply.op === "error") return this.#onSubscribeRefused(names, since, reply);
      this.#takeOffsets(reply.offsets);
      for (const name of names) {
        const ch = this.#channels.get(name);
        if (!ch) continue;
        ch.active = true;
        ch.resyncing = false;
        const recovered = name in since ? reply.recovered?.[name] === true : undefined;
        // History could not cover the loss (too old, Redis lost it): the app must reload.
        if (recovered === false) this.#emit("gap", { channel: name });
        this.#emit("subscribed", { channel: name, recovered });
      }
    });
  }

  /**
   * Where Herald says we stand on each history channel we just joined: our resume point
   * from now on, even before the first publication arrives (a drop then still resumes).
   * Publications after it carry later offsets, so it never moves us back.
   */
  #takeOffsets(offsets) {
    if (!offsets || typeof offsets !== "object") return;
    for (const [name, offset] of Object.entries(offsets)) {
      const ch = this.#channels.get(name);
      if (ch && typeof offset === "string") ch.offset = offset;
    }
  }

  #onSubscribeRefused(names, since, reply) {
    // A subscribe is all-or-nothing: one refused name refuses the batch. Retry one by one
    // so the others are not held hostage, and report the ones refused on their own.
    if (names.length > 1) {
      for (const name of names) this.#subscribeBatch([name]);
      return;
    }
    const [name] = names;
    const ch = this.#channels.get(name);
    if (!ch) return;
    ch.resyncing = false;
    if (name in since && reply.code === "bad_request") {
      // Herald no longer accepts our offset (e.g. a format from another version): start
      // live and tell the app it may have missed publications.
      ch.offset = null;
      this.#emit("gap", { channel: name });
      this.#subscribeBatch([name]);
      return;
    }
    this.#emit("error", { code: reply.code, message: reply.message, channel: name });
  }

  #request(frame, onReply) {
    const id = this.#nextId++;
    const ws = this.#ws;
    this.#pending.set(id, (reply) => {
      this.#clearTimer(`req${id}`);
      onReply(reply);
    });
    // No reply in time means a dead or wedged connection: start over.
    this.#setTimer(`req${id}`, this.#opts.timeout, () => this.#fail(ws, `no reply to ${frame.op}`));
    this.#send({ ...frame, id });
  }

  #send(frame) {
    try {
      this.#ws?.send(JSON.stringify(frame));
    } catch {
      // The socket is closing; its close event starts the reconnect.
    }
  }

  // ---- liveness ------------------------------------------------------------------------

  /** Checks for silence every so often rather than re-arming a timer per frame: a busy
   *  channel delivers thousands of frames a second. */
  #watchIdle() {
    const interval = this.#opts.pingInterval;
    if (!(interval > 0)) return;
    const silent = Date.now() - this.#lastFrameAt;
    if (silent >= interval) this.#probe();
    this.#setTimer("idle", silent >= interval ? interval : interval - silent, () => this.#watchIdle());
  }

  #probe() {
    if (this.#state !== "connected" || this.#timers.pong) return;
    const ws = this.#ws;
    this.#send({ op: "ping" });
    this.#setTimer("pong", this.#opts.pongTimeout, () => this.#fail(ws, "no pong"));
  }

  // ---- token ---------------------------------------------------------------------------

  async #currentToken() {
    const source = this.#opts.token;
    if (source == null) return null;
    if (typeof source === "string") return source;
    if (this.#token && !this.#tokenStale && tokenTimeLeft(this.#token, this.#tokenAt) > refreshLead(this.#token)) {
      return this.#token; // still good: no token fetch per reconnect (centrifuge-js#306)
    }
    const token = await source();
    this.#token = token;
    this.#tokenAt = Date.now();
    this.#tokenStale = false;
    return token;
  }

  /** Refreshes on the open connection ahead of `exp`, so Herald never closes it with 4001. */
  #scheduleRefresh(delay) {
    this.#clearTimer("refresh");
    if (typeof this.#opts.token !== "function" || !this.#token) return;
    if (delay === undefined) {
      const left = tokenTimeLeft(this.#token, this.#tokenAt);
      if (!Number.isFinite(left)) return; // no exp: nothing to refresh
      delay = Math.max(0, left - refreshLead(this.#token));
    }
    this.#setTimer("refresh", delay, () => this.#refresh());
  }

  async #refresh() {
    const ws = this.#ws;
    let token;
    try {
      token = await this.#opts.token();
    } catch (e) {
      this.#emit("error", { code: "token", message: String(e?.message ?? e) });
      if (ws === this.#ws) this.#scheduleRefresh(2000 + Math.random() * 3000);
      return;
    }
    if (ws !== this.#ws || !ws) return;
    this.#request({ op: "refresh", token }, (reply) => {
      if (reply.op === "error") {
        // The old token stays in force; try again, and if exp passes first the 4001 close
        // makes the next connect fetch a fresh token.
        this.#emit("error", { code: reply.code, message: reply.message });
        this.#scheduleRefresh(2000 + Math.random() * 3000);
        return;
      }
      this.#token = token;
      this.#tokenAt = Date.now();
      this.#tokenStale = false;
      this.#emit("refreshed", {});
      // Herald drops the channels the new token no longer allows; say so.
      const held = new Set(reply.channels ?? []);
      for (const [name, ch] of this.#channels) {
        if (ch.active && !held.has(name)) {
          ch.active = false;
          this.#emit("error", { code: "forbidden", message: "no longer allowed by the token", channel: name });
        }
      }
      this.#scheduleRefresh();
    });
  }

  // ---- plumbing ------------------------------------------------------------------------

  #setState(state) {
    if (this.#state === state) return;
    this.#state = state;
    this.#emit("state", state);
  }

  #emit(event, payload) {
    for (const fn of [...(this.#listeners.get(event) ?? [])]) {
      try {
        fn(payload);
      } catch (e) {
        if (event !== "error") this.#emit("error", { code: "handler", message: String(e?.message ?? e), error: e });
      }
    }
  }

  #setTimer(name, ms, fn) {
    this.#clearTimer(name);
    this.#timers[name] = setTimeout(() => {
      delete this.#timers[name];
      fn();
    }, Math.min(Math.max(0, ms), MAX_TIMER));
  }

  #clearTimer(name) {
    if (this.#timers[name] === undefined) return;
    clearTimeout(this.#timers[name]);
    delete this.#timers[name];
  }
}

/** The HTTP status of a refused upgrade, where the WebSocket implementation tells it
 *  (Node's `ws`: "Unexpected server response: 401"). Browsers never do. */
function refusedStatus(event) {
  const text = String(event?.message ?? event?.error?.message ?? "");
  const m = /Unexpected server response: (\d{3})/.exec(text);
  return m ? Number(m[1]) : null;
}

/** The JWT's claims, decoded but not verified (the server verifies; we only read `exp`). */
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

/** Milliseconds until the token expires, Infinity without `exp`. With `iat`, also counts
 *  the lifetime from when we got it, so a client clock running behind the issuer's does
 *  not refresh too late. */
function tokenTimeLeft(token, obtainedAt) {
  const { exp, iat } = claims(token);
  if (typeof exp !== "number") return Infinity;
  let left = exp * 1000 - Date.now();
  if (typeof iat === "number" && exp > iat) left = Math.min(left, (exp - iat) * 1000 - (Date.now() - obtainedAt));
  return left;
}

/** How long before expiry to refresh: a fifth of the lifetime, between 1 s and 60 s. */
function refreshLead(token) {
  const { exp, iat } = claims(token);
  const lifetime = typeof iat === "number" ? (exp - iat) * 1000 : 300000;
  return Math.min(60000, Math.max(1000, lifetime / 5));
}
