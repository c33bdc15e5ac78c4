// Appends, reads, errors, checkpoints and stream subscriptions against a real server.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { randomUUID } from "node:crypto";
import {
  AlreadyExistsError,
  Client,
  eventJson,
  FailedPreconditionError,
  HighwaterError,
  InvalidArgumentError,
  NotFoundError,
  type RecordedEvent,
  Status,
  U64_MAX,
  UnavailableError,
  WrongExpectedRevisionError,
} from "../src/index";
import { TestServer } from "./support/server";

describe("event store", { timeout: 120_000 }, () => {
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

  const positionsOf = (events: RecordedEvent[]) => events.map((e) => e.position);
  const revisionsOf = (events: RecordedEvent[]) => events.map((e) => e.revision);

  test("health reports the server and the event store SERVING", async () => {
    assert.equal(await client.health(), "SERVING");
    assert.equal(await client.health("highwater.v1.EventStoreService"), "SERVING");
    await client.ready(5_000);
    await assert.rejects(client.health("no.such.Service"), (err: unknown) => {
      assert.ok(err instanceof HighwaterError);
      assert.equal(err.code, Status.NOT_FOUND);
      return true;
    });
  });

  test("append returns bigint revisions and dense positions; the expected revision is checked", async () => {
    const first = await client.append("order-1", [
      { type: "OrderPlaced", data: { total: 10 } },
      { type: "OrderPaid", data: { amount: 10 } },
    ], { expectedRevision: "no-stream" });
    assert.equal(first.firstRevision, 0n);
    assert.equal(first.lastRevision, 1n);
    assert.equal(typeof first.firstPosition, "bigint");
    assert.equal(first.lastPosition, first.firstPosition + 1n);

    const second = await client.append("order-1", [{ type: "OrderShipped", data: {} }], { expectedRevision: 1n });
    assert.equal(second.firstRevision, 2n);
    assert.equal(second.lastRevision, 2n);
    assert.equal(second.firstPosition, first.lastPosition + 1n);

    // numbers and decimal strings are accepted for revisions too
    const third = await client.append("order-1", [{ type: "OrderDelivered", data: {} }], { expectedRevision: 2 });
    assert.equal(third.lastRevision, 3n);
    const fourth = await client.append("order-1", [{ type: "OrderRated", data: {} }], { expectedRevision: "3" });
    assert.equal(fourth.lastRevision, 4n);

    const exists = await client.append("order-1", [{ type: "Noted", data: {} }], { expectedRevision: "exists" });
    assert.equal(exists.lastRevision, 5n);
    const any = await client.append("order-1", [{ type: "Noted", data: {} }], { expectedRevision: "any" });
    assert.equal(any.lastRevision, 6n);
    const unchecked = await client.append("order-1", [{ type: "Noted", data: {} }]);
    assert.equal(unchecked.lastRevision, 7n);
  });

  test("a wrong expected revision is a WrongExpectedRevisionError (ABORTED) and writes nothing", async () => {
    await client.append("conflict-1", [{ type: "Created", data: {} }], { expectedRevision: "no-stream" });

    await assert.rejects(
      client.append("conflict-1", [{ type: "Changed", data: {} }], { expectedRevision: 5 }),
      (err: unknown) => {
        assert.ok(err instanceof WrongExpectedRevisionError, `got ${String(err)}`);
        assert.ok(err instanceof HighwaterError);
        assert.ok(err instanceof Error);
        assert.equal(err.code, Status.ABORTED);
        assert.equal(err.codeName, "ABORTED");
        assert.equal(err.reason, "WRONG_EXPECTED_REVISION");
        assert.equal(err.stream, "conflict-1");
        assert.equal(err.expected, "5");
        assert.equal(err.actual, 0n);
        assert.match(err.details, /wrong expected revision/);
        assert.match(err.message, /^ABORTED: .*conflict-1/);
        return true;
      },
    );
    await assert.rejects(
      client.append("conflict-1", [{ type: "Created", data: {} }], { expectedRevision: "no-stream" }),
      (err: unknown) => err instanceof WrongExpectedRevisionError && err.code === Status.ABORTED,
    );
    await assert.rejects(
      client.append("conflict-missing", [{ type: "Changed", data: {} }], { expectedRevision: "exists" }),
      (err: unknown) => err instanceof WrongExpectedRevisionError && err.code === Status.ABORTED && err.actual === undefined,
    );
    await assert.rejects(
      client.append("conflict-missing", [{ type: "Changed", data: {} }], { expectedRevision: 0 }),
      WrongExpectedRevisionError,
    );

    const events = await client.readStream("conflict-1").toArray();
    assert.deepEqual(events.map((e) => e.type), ["Created"]);
    await assert.rejects(client.readStream("conflict-missing").toArray(), (err: unknown) =>
      err instanceof NotFoundError && err.code === Status.NOT_FOUND);
  });

  test("events get ids by default, and errors have a class per status code", async () => {
    await client.append("ids-1", [{ type: "A", data: {} }, { type: "B", data: {} }]);
    await client.append("ids-1", [{ type: "A", data: {} }]);
    const ids = (await client.readStream("ids-1").toArray()).map((e) => e.id);
    assert.equal(new Set(ids).size, 3);
    for (const id of ids) {
      assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, "a random UUID from the client");
    }
    await assert.rejects(client.append("", [{ type: "A", data: {} }]), InvalidArgumentError);
    await assert.rejects(client.append("ids-2", [{ id: ids[0], type: "A", data: {} }]), AlreadyExistsError);
    await client.hardDeleteStream("ids-1");
    await assert.rejects(client.append("ids-1", [{ type: "A", data: {} }]), FailedPreconditionError);
    const unreachable = new Client("127.0.0.1:1", { callTimeoutMs: 2_000 });
    try {
      await assert.rejects(unreachable.append("ids-3", [{ type: "A", data: {} }]), UnavailableError);
    } finally {
      unreachable.close();
    }
  });

  test("appends are idempotent by event id", async () => {
    const events = [
      { id: randomUUID(), type: "Registered", data: { user: "ann" } },
      { id: randomUUID(), type: "Verified", data: {} },
    ];
    const first = await client.append("user-ann", events, { expectedRevision: "no-stream" });
    const again = await client.append("user-ann", events, { expectedRevision: "no-stream" });
    assert.deepEqual(again, first);
    const stored = await client.readStream("user-ann").toArray();
    assert.deepEqual(stored.map((e) => e.id), events.map((e) => e.id));

    await assert.rejects(
      client.append("user-other", [{ id: events[0]!.id, type: "Registered", data: {} }]),
      (err: unknown) => err instanceof HighwaterError && err.code === Status.ALREADY_EXISTS,
    );
  });

  test("bad input is INVALID_ARGUMENT with the field named", async () => {
    await assert.rejects(client.append("bad-1", [{ type: "", data: {} }]), (err: unknown) => {
      assert.ok(err instanceof HighwaterError);
      assert.equal(err.code, Status.INVALID_ARGUMENT);
      assert.deepEqual(err.fieldViolations.map((v) => v.field), ["events[0].type"]);
      return true;
    });
    await assert.rejects(client.append("bad-1", [{ type: "Ok", data: {} }, { type: "Broken", data: "{not json" }]), (err: unknown) => {
      assert.ok(err instanceof HighwaterError);
      assert.equal(err.code, Status.INVALID_ARGUMENT);
      assert.deepEqual(err.fieldViolations.map((v) => v.field), ["events[1].data"]);
      return true;
    });
    await assert.rejects(client.append("bad-1", []), (err: unknown) =>
      err instanceof HighwaterError && err.code === Status.INVALID_ARGUMENT);
    await assert.rejects(client.append("", [{ type: "Ok", data: {} }]), (err: unknown) =>
      err instanceof HighwaterError && err.code === Status.INVALID_ARGUMENT);
    await assert.rejects(client.readStream("bad-1").toArray(), (err: unknown) =>
      err instanceof HighwaterError && err.code === Status.NOT_FOUND);

    // uint64 arguments are checked before anything is sent
    await assert.rejects(client.append("bad-1", [{ type: "Ok", data: {} }], { expectedRevision: -1 }), RangeError);
    await assert.rejects(client.append("bad-1", [{ type: "Ok", data: {} }], { expectedRevision: U64_MAX + 1n }), RangeError);
    await assert.rejects(client.append("bad-1", [{ type: "Ok", data: {} }], { expectedRevision: 1.5 }), RangeError);
    // Rejected by the compiler (@ts-expect-error fails the build if it is not), and at run time
    // for JavaScript callers.
    // @ts-expect-error: a word is not a uint64
    assert.throws(() => client.readAll({ afterPosition: "ten" }), TypeError);
    // @ts-expect-error: the state is spelled "no-stream"
    await assert.rejects(client.append("bad-1", [{ type: "Ok", data: {} }], { expectedRevision: "nostream" }), TypeError);
    await client.append("typed-1", [{ type: "Ok", data: {} }], { expectedRevision: "no-stream" });
    await client.append("typed-1", [{ type: "Ok", data: {} }], { expectedRevision: "0" });
  });

  test("data, content type and metadata come back as written", async () => {
    const binary = Uint8Array.from([0, 1, 2, 254, 255]);
    await client.append("payload-1", [
      { type: "Json", data: { nested: { list: [1, 2, 3] }, text: "héllo" }, metadata: { correlation: "c-1", user: "ann" } },
      { type: "Binary", data: binary, contentType: "application/octet-stream" },
      { type: "Text", data: '{"already":"json"}' },
    ]);
    const [json, bin, text] = await client.readStream("payload-1").toArray();
    assert.ok(json && bin && text);
    assert.deepEqual(eventJson(json), { nested: { list: [1, 2, 3] }, text: "héllo" });
    assert.equal(json.contentType, "application/json");
    assert.deepEqual(json.metadata, { correlation: "c-1", user: "ann" });
    assert.ok(json.recordedAt instanceof Date);
    assert.ok(Math.abs(json.recordedAt.getTime() - Date.now()) < 60_000);
    assert.match(json.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(json.stream, "payload-1");
    assert.deepEqual(Uint8Array.from(bin.data), binary);
    assert.equal(bin.contentType, "application/octet-stream");
    assert.deepEqual(eventJson(text), { already: "json" });
  });

  test("readStream reads forwards, backwards, from a revision and up to a limit", async () => {
    const stream = "read-1";
    await client.append(stream, Array.from({ length: 10 }, (_, i) => ({ type: "Counted", data: { i } })));

    const all = await client.readStream(stream).toArray();
    assert.deepEqual(revisionsOf(all), [0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n]);
    assert.deepEqual(all.map((e) => eventJson<{ i: number }>(e).i), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);

    assert.deepEqual(revisionsOf(await client.readStream(stream, { fromRevision: 7 }).toArray()), [7n, 8n, 9n]);
    assert.deepEqual(revisionsOf(await client.readStream(stream, { fromRevision: 2n, limit: 3 }).toArray()), [2n, 3n, 4n]);
    assert.deepEqual(revisionsOf(await client.readStream(stream, { backwards: true, limit: 3 }).toArray()), [9n, 8n, 7n]);
    assert.deepEqual(revisionsOf(await client.readStream(stream, { backwards: true, fromRevision: 2 }).toArray()), [2n, 1n, 0n]);
    assert.deepEqual(await client.readStream(stream, { fromRevision: 10 }).toArray(), []);

    // a ReadResult can be iterated again, and left early
    const result = client.readStream(stream);
    let seen = 0;
    for await (const event of result) {
      assert.equal(event.stream, stream);
      if (++seen === 2) break;
    }
    assert.equal(seen, 2);
    assert.equal((await result.toArray()).length, 10);
  });

  test("readAll reads the global log in position order", async () => {
    const appended = await client.append("readall-1", [
      { type: "A", data: {} },
      { type: "B", data: {} },
      { type: "C", data: {} },
    ]);
    const head = appended.firstPosition - 1n;

    // Increasing, not necessarily dense: other tests on this server may hard-delete streams.
    const positions = positionsOf(await client.readAll().toArray());
    assert.ok(positions.every((p, i) => i === 0 || p > positions[i - 1]!), `${positions}`);
    assert.equal(positions.at(-1), appended.lastPosition);

    const tail = await client.readAll({ afterPosition: head }).toArray();
    assert.deepEqual(tail.map((e) => e.type), ["A", "B", "C"]);
    assert.deepEqual(positionsOf(await client.readAll({ afterPosition: head, limit: 2 }).toArray()), [head + 1n, head + 2n]);

    const last = await client.readAll({ backwards: true, limit: 1 }).toArray();
    assert.deepEqual(last.map((e) => e.type), ["C"]);
    const backwardsFrom = await client.readAll({ backwards: true, afterPosition: head + 2n, limit: 2 }).toArray();
    assert.deepEqual(positionsOf(backwardsFrom), [head + 2n, head + 1n]);
  });

  test("checkpoints are saved, never move backwards, are listed and deleted", async () => {
    await client.append("cp-1", Array.from({ length: 5 }, () => ({ type: "Tick", data: {} })));
    const head = (await client.readAll({ backwards: true, limit: 1 }).toArray())[0]!.position;

    assert.equal(await client.saveCheckpoint("cp-reader", head - 2n), head - 2n);
    assert.equal(await client.saveCheckpoint("cp-reader", head - 4n), head - 2n, "an older position is ignored");
    assert.equal(await client.saveCheckpoint("cp-reader", head), head);

    const listed = (await client.listSubscriptions()).find((s) => s.name === "cp-reader");
    assert.ok(listed, "the subscription is listed");
    assert.equal(listed.position, head);
    assert.equal(listed.lag, 0n);
    assert.ok(listed.updatedAt instanceof Date);

    await client.deleteSubscription("cp-reader");
    assert.equal((await client.listSubscriptions()).find((s) => s.name === "cp-reader"), undefined);
    await assert.rejects(client.deleteSubscription("cp-reader"), (err: unknown) =>
      err instanceof HighwaterError && err.code === Status.NOT_FOUND);
    await assert.rejects(client.saveCheckpoint("", 1), (err: unknown) =>
      err instanceof HighwaterError && err.code === Status.INVALID_ARGUMENT);
  });

  const notFound = (err: unknown) => err instanceof HighwaterError && err.code === Status.NOT_FOUND;
  const failedPrecondition = (err: unknown) => err instanceof HighwaterError && err.code === Status.FAILED_PRECONDITION;

  test("deleteStream hides a stream until an append recreates it after the deleted revisions", async () => {
    const stream = "deleted-1";
    const appended = await client.append(stream, [
      { type: "A", data: {} },
      { type: "B", data: {} },
      { type: "C", data: {} },
    ], { expectedRevision: "no-stream" });

    assert.equal(await client.deleteStream(stream, { expectedRevision: 2n }), 2n);
    await assert.rejects(client.readStream(stream).toArray(), notFound);
    await assert.rejects(client.deleteStream(stream), notFound, "deleted already");
    await assert.rejects(client.deleteStream("deleted-never-written"), notFound);
    // The events stay in the global log.
    const logged = await client.readAll({ afterPosition: appended.firstPosition - 1n }).toArray();
    assert.deepEqual(logged.map((e) => [e.stream, e.revision]), [[stream, 0n], [stream, 1n], [stream, 2n]]);

    // An append recreates the stream; its revisions continue after the deleted ones.
    const recreated = await client.append(stream, [{ type: "D", data: {} }], { expectedRevision: "no-stream" });
    assert.equal(recreated.firstRevision, 3n);
    assert.equal(recreated.firstPosition, appended.lastPosition + 1n);
    const read = await client.readStream(stream).toArray();
    assert.deepEqual(read.map((e) => [e.revision, e.type]), [[3n, "D"]]);

    // The other expectations, and revisions as numbers or strings.
    assert.equal(await client.deleteStream(stream, { expectedRevision: "exists" }), 3n);
    await client.append(stream, [{ type: "E", data: {} }]);
    assert.equal(await client.deleteStream(stream, { expectedRevision: "4" }), 4n);
    await client.append(stream, [{ type: "F", data: {} }]);
    assert.equal(await client.deleteStream(stream), 5n);
  });

  test("a delete with a wrong expected revision is a WrongExpectedRevisionError and deletes nothing", async () => {
    const stream = "deleted-conflict";
    await client.append(stream, [{ type: "A", data: {} }, { type: "B", data: {} }]);

    await assert.rejects(client.deleteStream(stream, { expectedRevision: 0 }), (err: unknown) => {
      assert.ok(err instanceof WrongExpectedRevisionError, `got ${String(err)}`);
      assert.equal(err.code, Status.ABORTED);
      assert.equal(err.reason, "WRONG_EXPECTED_REVISION");
      assert.equal(err.stream, stream);
      assert.equal(err.expected, "0");
      assert.equal(err.actual, 1n);
      return true;
    });
    await assert.rejects(client.deleteStream(stream, { expectedRevision: "no-stream" }), WrongExpectedRevisionError);
    await assert.rejects(client.hardDeleteStream(stream, { expectedRevision: 5n }), WrongExpectedRevisionError);
    assert.deepEqual(revisionsOf(await client.readStream(stream).toArray()), [0n, 1n], "nothing was deleted");

    // uint64 arguments are checked before anything is sent
    await assert.rejects(client.deleteStream(stream, { expectedRevision: -1 }), RangeError);
    // @ts-expect-error: a word is not a revision
    await assert.rejects(client.hardDeleteStream(stream, { expectedRevision: "two" }), TypeError);
  });

  test("hardDeleteStream erases a stream from the log and closes it with FAILED_PRECONDITION", async () => {
    const stream = "erased-1";
    const first = await client.append(stream, [{ type: "A", data: {} }, { type: "B", data: {} }]);
    const other = await client.append("erased-neighbour", [{ type: "Z", data: {} }]);
    // A soft delete first: the events it hid are erased too.
    assert.equal(await client.deleteStream(stream), 1n);
    const recreated = await client.append(stream, [{ type: "C", data: {} }]);

    const result = await client.hardDeleteStream(stream, { expectedRevision: 2n });
    assert.deepEqual(result, { deletedRevision: 2n, erasedEvents: 3n });
    // Gone from the global log; the neighbour keeps its position.
    const logged = await client.readAll({ afterPosition: first.firstPosition - 1n }).toArray();
    assert.deepEqual(logged.map((e) => [e.stream, e.position]), [["erased-neighbour", other.firstPosition]]);
    await assert.rejects(client.readStream(stream).toArray(), notFound);

    // Closed for good.
    await assert.rejects(
      client.append(stream, [{ type: "D", data: {} }], { expectedRevision: "no-stream" }),
      (err: unknown) => {
        assert.ok(err instanceof HighwaterError, `got ${String(err)}`);
        assert.equal(err.code, Status.FAILED_PRECONDITION);
        assert.equal(err.codeName, "FAILED_PRECONDITION");
        assert.match(err.details, /hard-deleted/);
        return true;
      },
    );
    await assert.rejects(client.append(stream, [{ type: "D", data: {} }]), failedPrecondition);
    await assert.rejects(client.deleteStream(stream), failedPrecondition);
    // A second hard delete (a retry) answers as the first one did.
    const again = await client.hardDeleteStream(stream);
    assert.equal(again.deletedRevision, result.deletedRevision);
    await assert.rejects(client.hardDeleteStream("erased-never-written"), notFound);

    // Later appends carry on from the head, past the gap.
    const later = await client.append("erased-after", [{ type: "Y", data: {} }]);
    assert.equal(later.firstPosition, recreated.lastPosition + 1n);
  });

  test("subscribeStream follows one stream, from a revision, before it exists", async () => {
    const stream = `followed-${randomUUID()}`;
    const seen: RecordedEvent[] = [];
    const sub = client.subscribeStream(stream);
    const done = (async () => {
      for await (const event of sub) {
        seen.push(event);
        if (seen.length === 4) break;
      }
    })();
    await client.append(stream, [{ type: "One", data: {} }, { type: "Two", data: {} }]);
    await client.append("unrelated-stream", [{ type: "Other", data: {} }]);
    await client.append(stream, [{ type: "Three", data: {} }, { type: "Four", data: {} }]);
    await done;
    assert.deepEqual(seen.map((e) => e.type), ["One", "Two", "Three", "Four"]);
    assert.deepEqual(revisionsOf(seen), [0n, 1n, 2n, 3n]);
    assert.equal(sub.revision, 3n);
    assert.equal(sub.isClosed, true);

    const fromTwo: string[] = [];
    for await (const event of client.subscribeStream(stream, { fromRevision: 2 })) {
      fromTwo.push(event.type);
      if (fromTwo.length === 2) break;
    }
    assert.deepEqual(fromTwo, ["Three", "Four"]);
  });
});
