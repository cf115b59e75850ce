// Types for herald-client (hand-written; the implementation is src/herald.js).

/** A JWT, or a function returning one (sync or async); called again before `exp` and
 *  after the server closed with 4001 or refused with 401. */
export type TokenSource = string | (() => string | Promise<string>);

/** Any constructor with the browser WebSocket's shape, e.g. `WebSocket` from the `ws` package. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: any }) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface HeraldOptions {
  token?: TokenSource;
  /** Needed where there is no global WebSocket (Node 20). */
  WebSocket?: WebSocketConstructor | (new (url: string) => any);
  /** ms; the first retry waits between this and twice this. Default 500. */
  minReconnectDelay?: number;
  /** ms; the cap of the exponential window, full jitter below it. Default 20000. */
  maxReconnectDelay?: number;
  /** ms; the wait after a 401/403 refusal before the upgrade (seen in Node only). Default 60000. */
  refusedDelay?: number;
  /** ms; until `welcome`, and for each request's reply. Default 10000. */
  timeout?: number;
  /** ms of silence before the client sends a `ping`; 0 turns it off. Default 15000. */
  pingInterval?: number;
  /** ms to wait for any frame after a `ping`. Default 5000. */
  pongTimeout?: number;
}

export type ConnectionState = "connecting" | "connected" | "disconnected";

export interface MessageMeta {
  channel: string;
  /** Set on history channels: the position to resume from. Opaque. */
  offset: string | null;
  /** "base64" when `data` is the base64 of a payload that was not UTF-8. */
  encoding?: "base64";
}

export type MessageHandler<T = unknown> = (data: T, meta: MessageMeta) => void;

export interface HeraldError {
  /** An HTTP status (401, 403), a close code (4003), a contract error code
   *  ("forbidden", "bad_channel", ...) or one of the client's own: "timeout", "token",
   *  "connect", "handler". */
  code: number | string;
  message: string;
  channel?: string;
  error?: unknown;
}

export interface HeraldEvents {
  state: ConnectionState;
  /** History could not cover a loss on this channel: reload its state from the application. */
  gap: { channel: string };
  /** `missed` publications were dropped for this client; `recovering`: the client is
   *  fetching them back from history (a history channel), so handlers will not miss them. */
  lagged: { channel: string; missed: number; recovering: boolean };
  error: HeraldError;
  /** The server confirmed the channel; `recovered` is set when it was a resume. */
  subscribed: { channel: string; recovered: boolean | undefined };
  /** The token was replaced on the open connection. */
  refreshed: {};
}

export interface Subscription {
  readonly channel: string;
  /** Stops delivery to this handler; the last handler of a channel unsubscribes it. */
  unsubscribe(): void;
}

export declare class Herald {
  constructor(url: string, options?: HeraldOptions);
  readonly state: ConnectionState;
  on<K extends keyof HeraldEvents>(event: K, listener: (payload: HeraldEvents[K]) => void): () => void;
  off<K extends keyof HeraldEvents>(event: K, listener: (payload: HeraldEvents[K]) => void): void;
  subscribe<T = unknown>(channel: string, handler: MessageHandler<T>): Subscription;
  connect(): void;
  close(): void;
}
