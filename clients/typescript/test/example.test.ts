// The quickstart example runs against a real server.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { main } from "../examples/quickstart";
import { TestServer } from "./support/server";

describe("examples/quickstart", { timeout: 60_000 }, () => {
  const server = new TestServer();

  before(() => server.start());
  after(() => server.dispose());

  test("appends, reads back and subscribes", async () => {
    const lines: string[] = [];
    const seen = await main(server.address, (line: string) => lines.push(line));
    assert.deepEqual(seen, [1n, 2n, 3n]);
    assert.match(lines[0]!, /^appended cart-\S+ revisions 0\.\.1 at positions 1\.\.2$/);
    assert.ok(lines.includes("conflict: expected 0, actual 1"), lines.join("\n"));
    assert.equal(lines.filter((l) => l.startsWith("read ")).length, 3);
    assert.ok(lines.some((l) => /^read cart-\S+@0 \(position 1\) ProductAdded \{"sku":"apple","quantity":2\}$/.test(l)), lines.join("\n"));
    assert.equal(lines.filter((l) => l.startsWith("subscription: ")).length, 3);
  });
});
