// The demo page in headless Chromium (Debian's, driven by playwright-core) against a real
// Herald: publish, SIGKILL Herald, publish during the outage, restart it, publish again;
// the page must show every publication once, in order, and be "connected" again.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serve } from "../examples/serve.js";
import { startStack, stopStack, eventually, metric, ensureChromium } from "./support.js";

const out = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../test-output");
let redis, herald, pub, web, browser;

after(async () => {
  await browser?.close();
  web?.close();
  await stopStack({ redis, herald, pub });
});

test("the demo page survives a Herald restart without losing or repeating a message", { timeout: 120000 }, async () => {
  const executablePath = ensureChromium();
  ({ redis, herald, pub } = await startStack({ history: "demo:*=1000/10m" }));
  web = await serve(0);
  browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  const page = await browser.newPage({ viewport: { width: 900, height: 1000 } });
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));

  const url = `http://127.0.0.1:${web.address().port}/examples/?url=${encodeURIComponent(herald.url)}&channel=demo:feed`;
  await page.goto(url);
  await page.waitForSelector('#state[data-state="connected"]', { timeout: 15000 });
  await page.evaluate(() => window.heraldClient.on("state", (s) => (window.states ??= []).push(s)));
  // The page's subscribe must have reached Herald before the first publication.
  await eventually(async () => (await metric(herald.port, "herald_subscriptions")) === 1, {
    what: "the page's subscription on Herald",
    describe: () => consoleLines.join("\n"),
  });

  const publish = (from, to) =>
    Promise.all(
      Array.from({ length: to - from + 1 }, (_, i) =>
        pub.command("FCALL", "herald_publish", 1, "demo:feed", JSON.stringify({ text: `message ${from + i}` })),
      ),
    );
  const shown = () => page.$$eval("li.message .text", (els) => els.map((e) => e.textContent));
  const wanted = (n) => Array.from({ length: n }, (_, i) => `message ${i + 1}`);

  await publish(1, 30);
  await eventually(async () => (await shown()).length >= 30, { what: "30 messages on the page" });

  await herald.kill();
  await page.waitForSelector('#state:not([data-state="connected"])', { timeout: 10000 });
  await publish(31, 60); // during the outage: kept in history, delivered to nobody
  await herald.start();
  await publish(61, 90);

  await eventually(async () => (await shown()).length >= 90, {
    timeout: 30000,
    what: "90 messages on the page",
    describe: () => consoleLines.join("\n"),
  });
  await page.waitForSelector('#state[data-state="connected"]', { timeout: 10000 });
  mkdirSync(out, { recursive: true });
  const screenshot = path.join(out, "browser-feed.png");
  await page.screenshot({ path: screenshot });

  assert.deepEqual(await shown(), wanted(90), "every message once, in order");
  assert.equal(await page.textContent("#state"), "connected");
  assert.equal(await page.$$eval("li.event", (els) => els.length), 0, "no gap shown");
  const states = await page.evaluate(() => window.states);
  assert.ok(states.includes("disconnected") && states.at(-1) === "connected", `states: ${states}`);
  console.log(`screenshot: ${screenshot}`);
});
