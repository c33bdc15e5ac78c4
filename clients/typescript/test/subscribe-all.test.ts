// SubscribeAll against a real server: catch-up then live, filters, checkpoints, durable
// subscriptions, the end of the log, closing.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Client, type RecordedEvent, type Subscription } from "../src/index";
import { eventually, TestServer } from "./support/server";

/** Collects a subscription's events until `until` says stop (or `limit` events). */
async function collect(sub: Subscription, until: (events: RecordedEvent[]) => boolean): Promise<RecordedEvent[]> {
  const events: RecordedEvent[] = [];
  for await (const event of sub) {
    events.push(event);
    if (until(events)) break;
  }
  return events;
}

describe("subscribeAll", { timeout: 120_000 }, () => {
  const server = new TestServer();
  let client: Client;

  before(async () => {
    await server.start();
    client = new Client(server.address, { callTimeoutMs: 10_000 });
    // positions 1..30: 10 carts of 3 events
    for (let cart = 1; cart <= 10; cart++) {
      await client.append(`cart-${cart}`, [
        { type: "ProductAdded", data: { sku: "apple", quantity: cart } },
        { type: "ProductAdded", data: { sku: "pear", quantity: 1 } },
        { type: "CartCheckedOut", data: {} },
      ]);
    }
    await client.append("audit-1", [{ type: "Audited", data: {} }]); // position 31
  });

  after(async () => {
    client?.close();
    await server.dispose();
  });

  test("catches up on history, says so, then delivers live events in order", async () => {
    const caughtUp: bigint[] = [];
    const sub = client.subscribeAll({ onCaughtUp: (p) => caughtUp.push(p) });
    let appendedLive = false;
    const events = await collect(sub, (seen) => {
      if (seen.length === 31 && !appendedLive) {
        appendedLive = true;
        void eventually(() => (caughtUp.length > 0 ? true : undefined)).then(() =>
          client.append("live-1", [{ type: "Live", data: { n: 1 } }, { type: "Live", data: { n: 2 } }])
        );
      }
      return seen.length === 33;
    });
    assert.deepEqual(events.map((e) => e.position), Array.from({ length: 33 }, (_, i) => BigInt(i + 1)));
    assert.deepEqual(events.slice(31).map((e) => e.stream), ["live-1", "live-1"]);
    assert.deepEqual(caughtUp, [31n], "caught_up once, at the head when the subscription started");
    assert.equal(sub.position, 33n);
    assert.equal(sub.reconnects, 0);
  });

  test("starts after a position", async () => {
    const events = await collect(client.subscribeAll({ afterPosition: 28n }), (seen) => seen.length === 3);
    assert.deepEqual(events.map((e) => e.position), [29n, 30n, 31n]);
  });

  test("filters by stream prefix and event type; checkpoints cover what the filter hides", async () => {
    const byType = await collect(
      client.subscribeAll({ filter: { eventTypes: ["CartCheckedOut"] } }),
      (seen) => seen.length === 10,
    );
    assert.deepEqual(byType.map((e) => e.stream), Array.from({ length: 10 }, (_, i) => `cart-${i + 1}`));
    assert.ok(byType.every((e) => e.type === "CartCheckedOut"));

    const byPrefix = await collect(
      client.subscribeAll({ filter: { streamPrefixes: ["cart-1", "audit-"] } }),
      (seen) => seen.length === 7,
    );
    // cart-1 and cart-10 (prefix cart-1), then audit-1
    assert.deepEqual(byPrefix.map((e) => e.stream), ["cart-1", "cart-1", "cart-1", "cart-10", "cart-10", "cart-10", "audit-1"]);

    const both = await collect(
      client.subscribeAll({ filter: { streamPrefixes: ["cart-2"], eventTypes: ["ProductAdded"] } }),
      (seen) => seen.length === 2,
    );
    assert.deepEqual(both.map((e) => [e.stream, e.type]), [["cart-2", "ProductAdded"], ["cart-2", "ProductAdded"]]);

    // A filter that matches nothing still moves the subscription forward through checkpoints.
    const checkpoints: bigint[] = [];
    let sub!: Subscription;
    sub = client.subscribeAll({
      filter: { eventTypes: ["NoSuchType"] },
      checkpointInterval: 5,
      onCheckpoint: (p) => checkpoints.push(p),
      onCaughtUp: () => sub.close(),
    });
    const none = await collect(sub, () => false);
    assert.deepEqual(none, []);
    assert.ok(checkpoints.length >= 2, `checkpoints: ${checkpoints.join(",")}`);
    assert.deepEqual(checkpoints, [...checkpoints].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), "checkpoints ascend");
    const head = (await client.readAll({ backwards: true, limit: 1 }).toArray())[0]!.position;
    assert.equal(sub.position, head, "the position reaches the head although nothing matched");
  });

  test("a durable subscription starts after its stored checkpoint, or at 0 when new", async () => {
    assert.equal(await client.saveCheckpoint("durable-a", 25), 25n);
    const fromCheckpoint = await collect(client.subscribeAll({ subscription: "durable-a" }), (seen) => seen.length === 3);
    assert.deepEqual(fromCheckpoint.map((e) => e.position), [26n, 27n, 28n]);

    const fresh = await collect(client.subscribeAll({ subscription: "durable-new" }), (seen) => seen.length === 2);
    assert.deepEqual(fresh.map((e) => e.position), [1n, 2n]);
    const listed = await client.listSubscriptions();
    const created = listed.find((s) => s.name === "durable-new");
    assert.ok(created, "subscribing created the durable subscription");
    assert.equal(created.position, 0n);

    // Saving the position the subscription reached moves the next start.
    assert.equal(await client.saveCheckpoint("durable-new", 2n), 2n);
    const resumed = await collect(client.subscribeAll({ subscription: "durable-new" }), (seen) => seen.length === 1);
    assert.deepEqual(resumed.map((e) => e.position), [3n]);
  });

  test("fromEnd delivers only what commits after the call", async () => {
    let ready!: () => void;
    const caughtUp = new Promise<void>((resolve) => (ready = resolve));
    const sub = client.subscribeAll({ fromEnd: true, onCaughtUp: () => ready() });
    const collected = collect(sub, (seen) => seen.length === 1);
    await caughtUp;
    const appended = await client.append("end-1", [{ type: "AfterTheCall", data: {} }]);
    const events = await collected;
    assert.deepEqual(events.map((e) => [e.type, e.position]), [["AfterTheCall", appended.lastPosition]]);
  });

  test("close() and an abort signal end the iteration", async () => {
    const sub = client.subscribeAll({ onCaughtUp: () => sub.close() });
    const events = await collect(sub, () => false);
    assert.ok(events.length >= 31);
    assert.equal(sub.isClosed, true);

    const controller = new AbortController();
    const aborted = client.subscribeAll({ fromEnd: true, signal: controller.signal });
    setTimeout(() => controller.abort(), 200);
    const started = Date.now();
    assert.deepEqual(await collect(aborted, () => false), []);
    assert.ok(Date.now() - started < 5_000);

    assert.throws(() => client.subscribeAll({ subscription: "x", afterPosition: 1 }), TypeError);
    const once = client.subscribeAll({ fromEnd: true });
    once[Symbol.asyncIterator]();
    assert.throws(() => once[Symbol.asyncIterator](), /only once/);
    once.close();
  });
});
