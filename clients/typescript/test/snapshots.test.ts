// Snapshots and aggregate loads against a real server.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Client, eventJson, HighwaterError, type RecordedEvent, Status } from "../src/index";
import { TestServer } from "./support/server";

interface Counter {
  value: number;
  count: number;
}

/** Order-sensitive: a missing, repeated or reordered number changes the result. */
const step = (state: Counter, n: number): Counter => ({ value: (state.value * 31 + n) % 1_000_003, count: state.count + 1 });
const fold = (state: Counter, event: RecordedEvent): Counter => step(state, eventJson<{ n: number }>(event).n);
const initial: Counter = { value: 0, count: 0 };

/** A deterministic generator, so that a failing case can be replayed. */
function generator(seed: number): (below: number) => number {
  let x = seed;
  return (below) => {
    x = (x * 1_103_515_245 + 12_345) % 2_147_483_648;
    return x % below;
  };
}

describe("snapshots", { timeout: 120_000 }, () => {
  const server = new TestServer();
  let client: Client;

  before(async () => {
    await server.start();
    client = new Client(server.address, { callTimeoutMs: 10_000 });
  });

  after(async () => {
    client?.close();
    await server.dispose();
  });

  test("a saved snapshot comes first and the events after it follow; bad saves are refused", async () => {
    await client.append("cart", [0, 1, 2, 3, 4, 5].map((n) => ({ type: "Added", data: { n } })));
    const none = await client.readFromSnapshot("cart");
    assert.equal(none.snapshot, undefined);
    assert.deepEqual(none.events.map((e) => e.revision), [0n, 1n, 2n, 3n, 4n, 5n]);

    const saved = await client.saveSnapshot("cart", { revision: 3, type: "Cart", data: { total: 6 } });
    assert.equal(saved.revision, 3n);
    assert.equal(saved.contentType, "application/json");
    const read = await client.readFromSnapshot("cart");
    assert.deepEqual(eventJson(read.snapshot!), { total: 6 });
    assert.deepEqual(read.events.map((e) => e.revision), [4n, 5n]);
    assert.equal((await client.readAll().toArray()).length, 6);

    await assert.rejects(client.saveSnapshot("cart", { revision: 6, type: "Cart", data: {} }), (err: unknown) => {
      assert.ok(err instanceof HighwaterError);
      assert.equal(err.code, Status.INVALID_ARGUMENT);
      assert.match(err.message, /beyond the stream's last revision, 5/);
      return true;
    });
    await assert.rejects(client.saveSnapshot("nowhere", { revision: 0, type: "Cart", data: {} }), (err: unknown) => {
      assert.ok(err instanceof HighwaterError);
      assert.equal(err.code, Status.NOT_FOUND);
      return true;
    });
    await assert.rejects(client.loadAggregate("cart", { initial, fold, snapshotType: "Cart", snapshotEvery: 0 }), RangeError);
  });

  test("an aggregate loaded from snapshots equals the fold of its whole stream", async () => {
    const below = generator(17);
    for (let c = 0; c < 5; c += 1) {
      const stream = `aggregate-${c}`;
      const every = 1 + below(8);
      let expected = initial;
      for (let round = 0; round < 1 + below(6); round += 1) {
        const batch = Array.from({ length: 1 + below(12) }, () => below(201) - 100);
        await client.append(stream, batch.map((n) => ({ type: "Added", data: { n } })));
        expected = batch.reduce(step, expected);
        const loaded = await client.loadAggregate(stream, { initial, fold, snapshotType: "Counter", snapshotEvery: every });
        assert.deepEqual(loaded.state, expected, `case ${c}, every ${every}`);
        assert.equal(loaded.revision, BigInt(expected.count - 1));
        assert.equal(loaded.savedSnapshot, loaded.eventsFolded >= every);
      }
      // A snapshot of another type is ignored: the whole stream is folded.
      const other = await client.loadAggregate(stream, { initial, fold, snapshotType: "OtherShape" });
      assert.equal(other.snapshotRevision, undefined);
      assert.deepEqual(other.state, expected);
    }
  });
});
