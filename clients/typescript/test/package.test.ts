// The package loads both ways its "exports" offer: `require` (CommonJS) and `import` (ES module),
// with the same names, as a user's code would load it by name.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";

// dist/test/package.test.js -> the package's folder.
const root = join(__dirname, "..", "..");

function exported(script: string, type: "commonjs" | "module"): string[] {
  const output = execFileSync(process.execPath, ["--input-type=" + type, "-e", script], { cwd: root, encoding: "utf8" });
  return JSON.parse(output) as string[];
}

test("require and import give the same client", () => {
  const required = exported(
    "const m = require('@highwater/client'); console.log(JSON.stringify(Object.keys(m).sort()))",
    "commonjs",
  );
  const imported = exported(
    // (__esModule is CommonJS interop's marker, which a re-export of CommonJS names too.)
    "const m = await import('@highwater/client'); " +
      "console.log(JSON.stringify(Object.keys(m).filter((k) => k !== '__esModule').sort()))",
    "module",
  );
  assert.ok(required.includes("Client") && required.includes("NotFoundError"), required.join(","));
  assert.deepEqual(imported, required);
  const esm = exported(
    "import { Client } from '@highwater/client'; const c = new Client('127.0.0.1:1'); " +
      "console.log(JSON.stringify([typeof c.append, import.meta.url.startsWith('file:')])); c.close()",
    "module",
  );
  assert.deepEqual(esm, ["function", true]);
  // One copy of the package whichever way it is loaded, so `instanceof` works across both.
  const same = exported(
    "import { createRequire } from 'node:module'; const required = createRequire(import.meta.url)('@highwater/client'); " +
      "const imported = await import('@highwater/client'); " +
      "console.log(JSON.stringify([required.NotFoundError === imported.NotFoundError, required.Client === imported.Client]))",
    "module",
  );
  assert.deepEqual(same, [true, true]);
});

test("a call deadline must be a positive number of milliseconds or null", async () => {
  const { Client } = await import("../src/index.js");
  for (const bad of [Number.NaN, 0, -1]) {
    assert.throws(() => new Client("127.0.0.1:1", { callTimeoutMs: bad }), RangeError, String(bad));
  }
  for (const good of [1, 30_000, Infinity, null]) {
    new Client("127.0.0.1:1", { callTimeoutMs: good }).close();
  }
});
