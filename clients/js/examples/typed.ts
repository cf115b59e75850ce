// Type-checked use of the package surface (npm run typecheck); not shipped.
import { Herald, type MessageMeta, type ConnectionState, type Subscription } from "../src/herald.js";

interface Chat {
  text: string;
}

async function fetchJwt(): Promise<string> {
  return "header.payload.signature";
}

const client = new Herald("wss://example.com/ws", {
  token: async () => fetchJwt(),
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
});

const sub: Subscription = client.subscribe<Chat>("chat:1", (data: Chat, meta: MessageMeta) => {
  const text: string = data.text;
  const where: string = meta.channel;
  const offset: string | null = meta.offset;
  console.log(text, where, offset);
});

const offState: () => void = client.on("state", (s: ConnectionState) => console.log(s));
client.on("gap", ({ channel }) => console.log("reload", channel));
client.on("lagged", ({ channel, missed, recovering }) => console.log(channel, missed, recovering));
client.on("error", ({ code, message }) => console.log(code, message));
client.on("subscribed", ({ channel, recovered }) => console.log(channel, recovered === true));
client.connect();
const state: ConnectionState = client.state;
console.log(state, sub.channel);
sub.unsubscribe();
offState();
client.close();

// @ts-expect-error: events are a closed set
client.on("nope", () => {});
// @ts-expect-error: the token is a string or a function returning one
new Herald("wss://example.com/ws", { token: 42 });
