// A subscription resumes across a server restart (same port, same database): every event once,
// in order, nothing lost, nothing repeated.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Client, HighwaterError, type RecordedEvent, Status } from "../src/index";
import { eventually, TestServer } from "./support/server";

describe("resuming subscriptions", { timeout: 180_000 }, () => {
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

  async function appendBatch(prefix: string, from: number, count: number): Promise<void> {
    await client.append(`${prefix}-${from}`, Array.from({ length: count }, (_, i) => ({
      type: "Numbered",
      data: { n: from + i },
    })));
  }

  test("a durable subscription survives a server restart with nothing lost or repeated", async () => {
    // History: positions 1..50.
    for (let from = 1; from <= 50; from += 10) {
      await appendBatch("history", from, 10);
    }
    assert.equal(await client.saveCheckpoint("restart-reader", 10), 10n);

    const reconnectErrors: HighwaterError[] = [];
    let caughtUp = 0;
    const sub = client.subscribeAll({
      subscription: "restart-reader",
      reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
      onReconnect: ({ error }) => reconnectErrors.push(error),
      onCaughtUp: () => caughtUp++,
    });

    const seen: RecordedEvent[] = [];
    let restart: Promise<void> | undefined;
    const liveAppended = eventually(() => (caughtUp > 0 ? true : undefined)).then(() => appendBatch("live", 51, 10));
    for await (const event of sub) {
      seen.push(event);
      if (event.position === 55n && !restart) {
        // Stop the server while the subscription is being iterated (positions 56..60 may be in
        // flight), then start it again on the same port and database and append more.
        restart = (async () => {
          await liveAppended;
          const exit = await server.stop();
          assert.equal(exit.code, 0, `the server exits 0 on SIGTERM:\n${server.log}`);
          await eventually(() => (reconnectErrors.length > 0 ? true : undefined), 20_000, "a failed reconnect");
          await server.start();
          await client.ready(20_000);
          await appendBatch("after-restart", 61, 10);
          await appendBatch("after-restart", 71, 10);
        })();
        // A failed restart ends the loop, and `await restart` below reports why.
        restart.catch(() => sub.close());
      }
      if (event.position === 80n) break;
    }
    await restart;

    assert.deepEqual(
      seen.map((e) => e.position),
      Array.from({ length: 70 }, (_, i) => BigInt(i + 11)),
      "positions 11..80, each once, in order",
    );
    assert.deepEqual(seen.map((e) => (JSON.parse(Buffer.from(e.data).toString()) as { n: number }).n), Array.from({ length: 70 }, (_, i) => i + 11));
    assert.ok(sub.reconnects >= 1, "the subscription reconnected");
    assert.ok(reconnectErrors.every((e) => e.code === Status.UNAVAILABLE), reconnectErrors.map((e) => e.message).join("; "));
    assert.ok(caughtUp >= 1, "caught up before the restart");
    assert.equal(sub.isClosed, true);

    // The checkpoint is the application's to save: the stored one did not move.
    const stored = (await client.listSubscriptions()).find((s) => s.name === "restart-reader");
    assert.equal(stored?.position, 10n);
    assert.equal(await client.saveCheckpoint("restart-reader", sub.position!), 80n);
  });

  test("a subscription started after a position resumes after a restart, also while nothing is appended", async () => {
    const head = (await client.readAll({ backwards: true, limit: 1 }).toArray())[0]!.position;
    const sub = client.subscribeAll({
      afterPosition: head - 5n,
      reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
    });
    const seen: bigint[] = [];
    let restarted = false;
    for await (const event of sub) {
      seen.push(event.position);
      if (seen.length === 5 && !restarted) {
        // caught up at the head: restart with no event in flight, then append
        restarted = true;
        await server.stop();
        await server.start();
        await client.ready(20_000);
        await appendBatch("quiet", 1000, 3);
      }
      if (seen.length === 8) break;
    }
    assert.deepEqual(seen, Array.from({ length: 8 }, (_, i) => head - 4n + BigInt(i)));
    assert.ok(sub.reconnects >= 1);
  });

  test("subscribeStream resumes from the revision after the last one it yielded", async () => {
    const stream = "resumed-stream";
    await client.append(stream, [{ type: "S", data: { n: 0 } }, { type: "S", data: { n: 1 } }]);
    const sub = client.subscribeStream(stream, { reconnect: { initialDelayMs: 50, maxDelayMs: 500 } });
    const revisions: bigint[] = [];
    for await (const event of sub) {
      revisions.push(event.revision);
      if (event.revision === 1n) {
        await server.stop();
        await server.start();
        await client.ready(20_000);
        await client.append(stream, [{ type: "S", data: { n: 2 } }]);
      }
      if (event.revision === 2n) break;
    }
    assert.deepEqual(revisions, [0n, 1n, 2n]);
    assert.ok(sub.reconnects >= 1);
  });

  test("with reconnect disabled the subscription throws UNAVAILABLE when the server stops", async () => {
    let ready!: () => void;
    const caughtUp = new Promise<void>((resolve) => (ready = resolve));
    const sub = client.subscribeAll({ fromEnd: true, reconnect: false, onCaughtUp: () => ready() });
    const outcome = (async () => {
      for await (const _ of sub) {
        // nothing is appended
      }
    })().then(() => "ended without an error", (err: unknown) => err);
    await caughtUp;
    await server.stop();
    const err = await outcome;
    assert.ok(err instanceof HighwaterError, String(err));
    assert.equal(err.code, Status.UNAVAILABLE);
    assert.equal(sub.reconnects, 0);
    await server.start();
    await client.ready(20_000);
  });

  test("a subscription gives up after maxAttempts failures in a row", async () => {
    await server.stop();
    const attempts: number[] = [];
    const sub = client.subscribeAll({
      reconnect: { initialDelayMs: 20, maxDelayMs: 50, maxAttempts: 3 },
      onReconnect: ({ attempt }) => attempts.push(attempt),
    });
    await assert.rejects(
      (async () => {
        for await (const _ of sub) {
          // the server is down
        }
      })(),
      (err: unknown) => err instanceof HighwaterError && err.code === Status.UNAVAILABLE,
    );
    assert.deepEqual(attempts, [1, 2, 3]);
    await server.start();
    await client.ready(20_000);
  });
});
