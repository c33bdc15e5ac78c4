// Calls that are safe to repeat are retried while the server is unreachable; others are not.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Client, UnavailableError } from "../src/index";
import { TestServer } from "./support/server";

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe("retries", { timeout: 120_000 }, () => {
  const server = new TestServer();

  before(async () => {
    await server.start();
  });

  after(async () => {
    await server.dispose();
  });

  test("an append with ids and a read are retried until the server is back", async () => {
    const client = new Client(server.address, {
      callTimeoutMs: 5_000,
      callRetry: { attempts: 12, initialDelayMs: 200, maxDelayMs: 1_000 },
    });
    try {
      await client.append("retried", [{ type: "E", data: { n: 0 } }]);
      await server.stop();
      const back = sleep(500).then(() => server.start());
      const appended = await client.append("retried", [{ type: "E", data: { n: 1 } }]);
      await back;
      assert.equal(appended.firstRevision, 1n);
      await server.stop();
      const backAgain = sleep(500).then(() => server.start());
      const events = await client.readStream("retried").toArray();
      await backAgain;
      assert.deepEqual(events.map((e) => e.revision), [0n, 1n]);
    } finally {
      client.close();
    }
  });

  test("calls unsafe to repeat fail at once", async () => {
    const client = new Client(server.address, {
      callTimeoutMs: 5_000,
      callRetry: { attempts: 5, initialDelayMs: 3_000, maxDelayMs: 3_000 },
    });
    try {
      await client.append("once", [{ type: "E", data: {} }]);
      await server.stop();
      for (const call of [
        () => client.append("once", [{ id: "", type: "E", data: {} }]), // no id: not recognisable
        () => client.deleteStream("once"),
      ]) {
        const started = Date.now();
        await assert.rejects(call(), UnavailableError);
        assert.ok(Date.now() - started < 2_500, "retried although unsafe to repeat");
      }
      // A safe call does retry (and so takes at least one wait) before giving up.
      const patient = new Client(server.address, { callTimeoutMs: 1_000, callRetry: { attempts: 2, initialDelayMs: 1_000 } });
      const started = Date.now();
      await assert.rejects(patient.append("once", [{ type: "E", data: {} }]), UnavailableError);
      assert.ok(Date.now() - started >= 500);
      patient.close();
    } finally {
      client.close();
      await server.start();
    }
    assert.throws(() => new Client(server.address, { callRetry: { attempts: 0 } }), RangeError);
  });
});
