// Projections and rebuilds against a real server loaded with examples/projections (cart_summary).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  Client,
  HighwaterError,
  type ProjectionInfo,
  type RebuildProgress,
  RebuildProgress_Phase as Phase,
  Status,
} from "../src/index";
import { eventually, TestServer } from "./support/server";

describe("administration", { timeout: 180_000 }, () => {
  const server = new TestServer({ projections: true });
  let client: Client;

  const cartRows = () =>
    server.query("SELECT cart_id, item_count, line_count, checked_out FROM projections.cart_summary ORDER BY cart_id");

  const activeProjection = (name: string) =>
    eventually(async () => {
      const info = await client.getProjection(name);
      return info.status === "active" && info.activeVersion > 0 ? info : undefined;
    }, 30_000, `${name} active`);

  before(async () => {
    await server.start();
    client = new Client(server.address, { callTimeoutMs: 20_000 });
    await activeProjection("cart_summary");
    await client.append("cart-1", [
      { type: "ProductAdded", data: { sku: "apple", quantity: 2 } },
      { type: "ProductAdded", data: { sku: "pear", quantity: 3 } },
      { type: "ProductRemoved", data: { sku: "apple", quantity: 2 } },
    ]);
    await client.append("cart-2", [
      { type: "ProductAdded", data: { sku: "plum", quantity: 1 } },
      { type: "CartCheckedOut", data: {} },
    ]);
  });

  after(async () => {
    client?.close();
    await server.dispose();
  });

  test("the example projection is listed, described and kept inline", async () => {
    const projections = await client.listProjections();
    const cart = projections.find((p) => p.name === "cart_summary");
    assert.ok(cart, `listed: ${projections.map((p) => p.name).join(", ")}`);
    assert.equal(cart.status, "active");

    const info = await client.getProjection("cart_summary");
    assert.equal(info.name, "cart_summary");
    assert.equal(info.definition?.name, "cart_summary");
    assert.deepEqual(Object.keys(info.definition?.handlers ?? {}).sort(), ["CartCheckedOut", "ProductAdded", "ProductRemoved"]);
    assert.equal(info.head, 5n);
    assert.equal(info.appliedPosition, 5n);
    assert.ok(info.versions.length >= 1);

    assert.equal(cartRows(), "cart-1|3|1|f\ncart-2|1|1|t");

    await assert.rejects(client.getProjection("no_such_projection"), (err: unknown) =>
      err instanceof HighwaterError && err.code === Status.NOT_FOUND);
  });

  async function rebuild(name: string, inPlace: boolean): Promise<RebuildProgress[]> {
    const updates: RebuildProgress[] = [];
    for await (const progress of client.rebuild(name, { inPlace })) {
      updates.push(progress);
    }
    return updates;
  }

  test("a blue/green rebuild yields progress ending in PHASE_DONE and activates the next version", async () => {
    const before = await client.getProjection("cart_summary");
    const updates = await rebuild("cart_summary", false);
    assert.ok(updates.length >= 2, `updates: ${updates.map((u) => Phase[u.phase]).join(", ")}`);
    const last = updates.at(-1)!;
    assert.equal(last.phase, Phase.PHASE_DONE, `phases: ${updates.map((u) => Phase[u.phase]).join(", ")}`);
    assert.equal(last.error, "");
    assert.equal(last.position, 5n);
    assert.equal(last.head, 5n);
    assert.ok(last.node.length > 0);
    const phases = updates.map((u) => u.phase);
    assert.deepEqual(phases, [...phases].sort((a, b) => a - b), "phases only move forwards");
    assert.ok(!phases.includes(Phase.PHASE_FAILED));

    const afterwards = await client.getProjection("cart_summary");
    assert.equal(afterwards.activeVersion, last.version);
    assert.equal(afterwards.activeVersion, before.activeVersion + 1);
    assert.equal(afterwards.status, "active");
    assert.equal(cartRows(), "cart-1|3|1|f\ncart-2|1|1|t", "the rebuilt table holds the same rows");
  });

  test("an in-place rebuild yields progress ending in PHASE_DONE and keeps the version", async () => {
    const before = await client.getProjection("cart_summary");
    const updates = await rebuild("cart_summary", true);
    const last = updates.at(-1)!;
    assert.equal(last.phase, Phase.PHASE_DONE, `phases: ${updates.map((u) => Phase[u.phase]).join(", ")}`);
    assert.equal(last.position, 5n);
    const afterwards = await client.getProjection("cart_summary");
    assert.equal(afterwards.activeVersion, before.activeVersion);
    assert.equal(cartRows(), "cart-1|3|1|f\ncart-2|1|1|t");
  });

  test("rebuilding an unknown projection is NOT_FOUND", async () => {
    await assert.rejects(rebuild("no_such_projection", false), (err: unknown) =>
      err instanceof HighwaterError && err.code === Status.NOT_FOUND);
  });

  test("projections are registered from a definition or from TOML, and bad SQL is INVALID_ARGUMENT", async () => {
    const registered = await client.registerProjection({
      name: "sku_totals",
      version: 1,
      mode: "inline",
      onError: "fail",
      setup: "CREATE TABLE {{table}} (sku text PRIMARY KEY, quantity integer NOT NULL)",
      handlers: {
        ProductAdded: `INSERT INTO {{table}} AS t (sku, quantity) VALUES ($data->>'sku', ($data->>'quantity')::int)
                       ON CONFLICT (sku) DO UPDATE SET quantity = t.quantity + EXCLUDED.quantity`,
      },
    });
    assert.equal(registered.name, "sku_totals");
    await activeProjection("sku_totals");
    assert.equal(server.query("SELECT sku, quantity FROM projections.sku_totals ORDER BY sku"), "apple|2\npear|3\nplum|1");
    await client.append("cart-3", [{ type: "ProductAdded", data: { sku: "apple", quantity: 5 } }]);
    assert.equal(server.query("SELECT quantity FROM projections.sku_totals WHERE sku = 'apple'"), "7");

    const fromToml = await client.registerProjection(`
name = "checkouts"
version = 1
mode = "async"
setup = "CREATE TABLE {{table}} (cart_id text PRIMARY KEY)"

[handlers]
CartCheckedOut = "INSERT INTO {{table}} (cart_id) VALUES ($stream)"
`);
    assert.equal(fromToml.name, "checkouts");
    await activeProjection("checkouts");
    await eventually(() => (server.query("SELECT string_agg(cart_id, ',') FROM projections.checkouts") === "cart-2" ? true : undefined), 30_000, "the async projection applied");

    const names = (await client.listProjections()).map((p: ProjectionInfo) => p.name);
    assert.ok(["cart_summary", "checkouts", "sku_totals"].every((n) => names.includes(n)), names.join(", "));

    await assert.rejects(
      client.registerProjection({ name: "broken", setup: "CREATE TABLE {{table}} (id int)", handlers: { X: "INSERT INTO {{table}} (no_such_column) VALUES (1)" } }),
      (err: unknown) => err instanceof HighwaterError && err.code === Status.INVALID_ARGUMENT,
    );
  });

  test("dead letters are listed and retried", async () => {
    const setup = "CREATE TABLE {{table}} (n integer NOT NULL CHECK (n > 0))";
    await client.registerProjection({
      name: "positives",
      mode: "inline",
      onError: "skip",
      setup,
      handlers: { Measured: "INSERT INTO {{table}} (n) VALUES (($data->>'n')::int)" },
    });
    await activeProjection("positives");
    const appended = await client.append("measure-1", [
      { type: "Measured", data: { n: 4 } },
      { type: "Measured", data: { n: -3 } },
    ]);

    const messages = await client.listSystemMessages({ projection: "positives" });
    assert.equal(messages.length, 1, JSON.stringify(messages, (_, v) => (typeof v === "bigint" ? String(v) : v)));
    const [letter] = messages;
    assert.equal(letter!.kind, "dead_letter");
    assert.equal(letter!.position, appended.lastPosition);
    assert.equal(letter!.projection, "positives");
    assert.ok(letter!.reason.length > 0);
    assert.equal(letter!.archivedAt, undefined);
    assert.equal((await client.getProjection("positives")).deadLetters, 1n);

    assert.deepEqual(await client.retryDeadLetters("positives"), { applied: 0n, stillFailing: 1n });

    // The same version and setup with a fixed handler updates it in place; the retry then applies.
    await client.registerProjection({
      name: "positives",
      mode: "inline",
      onError: "skip",
      setup,
      handlers: { Measured: "INSERT INTO {{table}} (n) VALUES (abs(($data->>'n')::int))" },
    });
    assert.deepEqual(await client.retryDeadLetters("positives"), { applied: 1n, stillFailing: 0n });
    assert.equal(server.query("SELECT string_agg(n::text, ',' ORDER BY n) FROM projections.positives"), "3,4");
    assert.deepEqual(await client.listSystemMessages({ projection: "positives" }), []);
    const archived = await client.listSystemMessages({ projection: "positives", includeArchived: true });
    assert.equal(archived.length, 1);
    assert.ok(archived[0]!.archivedAt instanceof Date);
  });
});
