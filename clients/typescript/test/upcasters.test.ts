// Upcasters through the TypeScript client against a real server.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Client, eventJson, HighwaterError, Status } from "../src/index";
import { TestServer } from "./support/server";

const V1_TO_V2 = `
name = "order_v1"
event_type = "Order"
from_version = "1"
to_version = "2"
data = "($data - 'amount') || jsonb_build_object('total', $data->'amount')"
`;

describe("upcasters", { timeout: 120_000 }, () => {
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

  test("reads are upcast unless original is asked for", async () => {
    const stored = await client.registerUpcaster(V1_TO_V2);
    assert.equal(stored.toType, "Order");
    await client.append("order-1", [{ type: "Order", data: { amount: 5 }, metadata: { schema_version: "1" } }]);

    const [upcast] = await client.readStream("order-1").toArray();
    assert.deepEqual(eventJson(upcast!), { total: 5 });
    assert.equal(upcast!.metadata["schema_version"], "2");
    const [original] = await client.readStream("order-1", { original: true }).toArray();
    assert.deepEqual(eventJson(original!), { amount: 5 });
    const all = await client.readAll({ original: true }).toArray();
    assert.deepEqual(all.map((e) => eventJson(e)), [{ amount: 5 }]);
    assert.deepEqual((await client.listUpcasters()).map((u) => u.definition?.name), ["order_v1"]);

    await client.deleteUpcaster("order_v1");
    await assert.rejects(client.deleteUpcaster("order_v1"), (error: unknown) =>
      error instanceof HighwaterError && error.code === Status.NOT_FOUND);
  });
});
