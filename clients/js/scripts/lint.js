// Lint without a linter dependency: every .js file must parse (`node --check`), and the
// package file must keep its promises: no imports (no runtime dependencies), no Node-only
// globals a browser lacks, no leftover debugging.
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const files = ["src", "test", "examples", "scripts"].flatMap((dir) =>
  readdirSync(path.join(root, dir)).filter((f) => f.endsWith(".js")).map((f) => path.join(dir, f)),
);
let problems = 0;
for (const f of files) {
  try {
    execFileSync(process.execPath, ["--check", path.join(root, f)], { stdio: "pipe" });
  } catch (e) {
    problems++;
    console.error(`${f}: ${e.stderr}`);
  }
}
const src = readFileSync(path.join(root, "src/herald.js"), "utf8");
const rules = [
  [/^\s*import\s/m, "imports something: the package has no runtime dependencies"],
  [/\brequire\(/, "uses require: the package is an ES module"],
  [/\b(process|Buffer|__dirname)\b/, "uses a Node-only global: the file must run in a browser"],
  [/\bconsole\.(log|debug)\b|\bdebugger\b/, "leftover debugging"],
];
for (const [re, why] of rules) {
  const m = re.exec(src);
  if (m) {
    problems++;
    const line = src.slice(0, m.index).split("\n").length;
    console.error(`src/herald.js:${line}: ${why}`);
  }
}
console.log(`lint: ${files.length} files, ${problems} problems`);
process.exit(problems ? 1 : 0);
