// Bearer tokens and TLS against real servers started with --auth-file and --tls-cert/--tls-key.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import {
  Client,
  type ClientOptions,
  HighwaterError,
  PermissionDeniedError,
  RebuildProgress_Phase as Phase,
  Status,
  UnauthenticatedError,
} from "../src/index";
import { TestServer } from "./support/server";
import { type Certificates, makeCertificates } from "./support/tls";

type Role = "read" | "write" | "admin";

// One token per role, new for each run; the auth file holds only their SHA-256.
const TOKENS: Record<Role, string> = {
  read: `hw_test_read_${randomBytes(16).toString("hex")}`,
  write: `hw_test_write_${randomBytes(16).toString("hex")}`,
  admin: `hw_test_admin_${randomBytes(16).toString("hex")}`,
};
const NAMES: Record<Role, string> = { read: "reader", write: "writer", admin: "operator" };

/** Writes an auth file with the tokens' hashes in a new folder; returns its path. */
function writeAuthFile(): string {
  const dir = mkdtempSync(path.join(tmpdir(), "hw-ts-auth-"));
  const file = path.join(dir, "auth.toml");
  const entries = (Object.keys(TOKENS) as Role[]).map((role) =>
    `[[token]]\nname = "${NAMES[role]}"\nrole = "${role}"\n` +
    `sha256 = "${createHash("sha256").update(TOKENS[role]).digest("hex")}"\n`
  );
  writeFileSync(file, entries.join("\n"));
  return file;
}

/** Runs `body`, which must fail with an error of class `Type` and gRPC status `code`; returns the error. */
async function failsWith<T extends HighwaterError>(
  body: () => Promise<unknown>,
  Type: new (...args: never[]) => T,
  code: Status,
): Promise<T> {
  try {
    await body();
  } catch (err) {
    assert.ok(err instanceof Type, `expected ${Type.name}, got ${String(err)}`);
    assert.ok(err instanceof HighwaterError);
    assert.equal(err.code, code);
    return err;
  }
  assert.fail(`expected ${Type.name}, but the call succeeded`);
}

const events = (count: number) => Array.from({ length: count }, (_, n) => ({ type: "E", data: { n } }));

describe("tokens and roles", { timeout: 180_000 }, () => {
  const authFile = writeAuthFile();
  // The example projections, for the admin calls.
  const server = new TestServer({ projections: true, args: ["--auth-file", authFile] });
  const clients: Client[] = [];
  const connect = (role?: Role, options: ClientOptions = {}) => {
    const client = new Client(server.address, { token: role && TOKENS[role], callTimeoutMs: 10_000, ...options });
    clients.push(client);
    return client;
  };

  before(async () => {
    await server.start();
  });

  after(async () => {
    for (const client of clients) client.close();
    try {
      await server.dispose();
    } finally {
      rmSync(path.dirname(authFile), { recursive: true, force: true });
    }
  });

  test("without a valid token calls are UNAUTHENTICATED; health stays open", async () => {
    const anonymous = connect();
    assert.equal(await anonymous.health("highwater.v1.EventStoreService"), "SERVING");
    const err = await failsWith(() => anonymous.readAll().toArray(), UnauthenticatedError, Status.UNAUTHENTICATED);
    assert.match(err.details, /missing bearer token/);
    assert.match(err.requestId ?? "", /^[0-9a-f-]{36}$/, "the server's request id for the refused call");
    await failsWith(() => anonymous.append("s", events(1)), UnauthenticatedError, Status.UNAUTHENTICATED);
    await failsWith(() => anonymous.listProjections(), UnauthenticatedError, Status.UNAUTHENTICATED);

    const unknown = new Client(server.address, { token: "not-a-known-token", callTimeoutMs: 10_000 });
    clients.push(unknown);
    const refused = await failsWith(() => unknown.readStream("s").toArray(), UnauthenticatedError, Status.UNAUTHENTICATED);
    assert.match(refused.details, /unknown bearer token/);

    assert.throws(() => new Client(server.address, { token: "two\nlines" }), TypeError);
  });

  test("a read token reads, and gets PERMISSION_DENIED for writes and administration", async () => {
    await connect("write").append("cart-1", events(3), { expectedRevision: "no-stream" });
    const reader = connect("read");
    assert.deepEqual((await reader.readStream("cart-1").toArray()).map((e) => e.revision), [0n, 1n, 2n]);
    assert.deepEqual((await reader.readAll({ backwards: true, limit: 1 }).toArray()).map((e) => e.position), [3n]);
    assert.deepEqual(await reader.listSubscriptions(), []);

    const err = await failsWith(() => reader.append("cart-1", events(1)), PermissionDeniedError, Status.PERMISSION_DENIED);
    assert.match(err.details, /"reader".*needs write/);
    assert.ok(err.requestId);
    await failsWith(() => reader.saveCheckpoint("billing", 1), PermissionDeniedError, Status.PERMISSION_DENIED);
    await failsWith(() => reader.getProjection("cart_summary"), PermissionDeniedError, Status.PERMISSION_DENIED);
    assert.equal((await reader.readStream("cart-1").toArray()).length, 3, "nothing was written");
  });

  test("a write token appends and manages subscriptions, but not projections", async () => {
    const writer = connect("write");
    const result = await writer.append("cart-2", events(2), { expectedRevision: "no-stream" });
    assert.equal(result.lastRevision, 1n);
    assert.equal(await writer.saveCheckpoint("billing", result.lastPosition), result.lastPosition);
    assert.deepEqual((await writer.listSubscriptions()).map((s) => s.name), ["billing"]);
    await writer.deleteSubscription("billing");
    const err = await failsWith(() => writer.listProjections(), PermissionDeniedError, Status.PERMISSION_DENIED);
    assert.match(err.details, /needs admin/);
    await failsWith(async () => {
      for await (const _ of writer.rebuild("cart_summary")) {
        // refused before any progress
      }
    }, PermissionDeniedError, Status.PERMISSION_DENIED);
  });

  test("an admin token lists and rebuilds projections", async () => {
    const admin = connect("admin");
    await admin.append("cart-3", [{ type: "ProductAdded", data: { sku: "apple", quantity: 2 } }]);
    assert.ok((await admin.listProjections()).some((p) => p.name === "cart_summary"));
    assert.equal((await admin.getProjection("cart_summary")).name, "cart_summary");
    const phases: Phase[] = [];
    for await (const progress of admin.rebuild("cart_summary", { inPlace: true })) {
      phases.push(progress.phase);
    }
    assert.equal(phases.at(-1), Phase.PHASE_DONE);
  });

  test("deletes need a write token, hard deletes an admin token", async () => {
    const writer = connect("write");
    // delete-2, to be erased, is not last: later tests take the last event's position as the head.
    await writer.append("delete-2", events(1), { expectedRevision: "no-stream" });
    await writer.append("delete-1", events(2), { expectedRevision: "no-stream" });

    const reader = connect("read");
    const denied = await failsWith(
      () => reader.deleteStream("delete-1"),
      PermissionDeniedError,
      Status.PERMISSION_DENIED,
    );
    assert.match(denied.details, /needs write/);
    await failsWith(() => reader.hardDeleteStream("delete-1"), PermissionDeniedError, Status.PERMISSION_DENIED);

    assert.equal(await writer.deleteStream("delete-1", { expectedRevision: 1 }), 1n);
    const err = await failsWith(
      () => writer.hardDeleteStream("delete-2"),
      PermissionDeniedError,
      Status.PERMISSION_DENIED,
    );
    assert.match(err.details, /"writer".*needs admin/);
    assert.ok(err.requestId);
    assert.equal((await reader.readStream("delete-2").toArray()).length, 1, "nothing was erased");

    const admin = connect("admin");
    const erased = await admin.hardDeleteStream("delete-2", { expectedRevision: 0 });
    assert.deepEqual(erased, { deletedRevision: 0n, erasedEvents: 1n });
    await failsWith(() => writer.append("delete-2", events(1)), HighwaterError, Status.FAILED_PRECONDITION);
  });

  test("subscriptions send the token, also when they reconnect after a restart", async () => {
    const writer = connect("write");
    const reader = connect("read");
    const stream = "sub-1";
    const head = (await reader.readAll({ backwards: true, limit: 1 }).toArray())[0]?.position ?? 0n;
    await writer.append(stream, events(2));
    const reconnect = { initialDelayMs: 50, maxDelayMs: 500 };
    const all = reader.subscribeAll({ afterPosition: head, reconnect });
    const one = reader.subscribeStream(stream, { reconnect });
    const allEvents = all[Symbol.asyncIterator]();
    const streamEvents = one[Symbol.asyncIterator]();
    try {
      const take = async (iterator: AsyncIterator<{ position: bigint; revision: bigint }>, count: number) => {
        const taken = [];
        for (let i = 0; i < count; i++) {
          const next = await iterator.next();
          assert.ok(!next.done, "the subscription ended");
          taken.push(next.value);
        }
        return taken;
      };
      assert.deepEqual((await take(allEvents, 2)).map((e) => e.position), [head + 1n, head + 2n]);
      assert.deepEqual((await take(streamEvents, 2)).map((e) => e.revision), [0n, 1n]);

      assert.equal((await server.stop()).code, 0);
      await server.start();
      await writer.ready(20_000);
      await writer.append(stream, events(2));
      assert.deepEqual((await take(allEvents, 2)).map((e) => e.position), [head + 3n, head + 4n]);
      assert.deepEqual((await take(streamEvents, 2)).map((e) => e.revision), [2n, 3n]);
      assert.ok(all.reconnects >= 1 && one.reconnects >= 1, "both subscriptions reconnected");
    } finally {
      all.close();
      one.close();
    }

    // A refused subscription is not retried: the error comes out at once.
    const anonymous = connect();
    const first = (sub: AsyncIterable<unknown>) => sub[Symbol.asyncIterator]().next();
    await failsWith(() => first(anonymous.subscribeAll()), UnauthenticatedError, Status.UNAUTHENTICATED);
    await failsWith(() => first(anonymous.subscribeStream(stream)), UnauthenticatedError, Status.UNAUTHENTICATED);
  });
});

describe("TLS", { timeout: 180_000 }, () => {
  let certs: Certificates;
  let server: TestServer;
  const clients: Client[] = [];
  const connect = (address: string, options: ClientOptions) => {
    const client = new Client(address, { callTimeoutMs: 10_000, ...options });
    clients.push(client);
    return client;
  };

  before(async () => {
    certs = makeCertificates("localhost");
    server = new TestServer({
      args: ["--tls-cert", certs.server.certFile, "--tls-key", certs.server.keyFile],
      host: "localhost",
      clientOptions: { tls: { ca: certs.ca.cert } },
    });
    await server.start();
  });

  after(async () => {
    for (const client of clients) client.close();
    try {
      await server?.dispose();
    } finally {
      certs?.remove();
    }
  });

  test("a client with the CA appends, reads and subscribes over TLS", async () => {
    const client = connect(server.address, { tls: { ca: certs.ca.cert } });
    await client.append("cart-1", events(3), { expectedRevision: "no-stream" });
    assert.deepEqual((await client.readStream("cart-1").toArray()).map((e) => e.revision), [0n, 1n, 2n]);
    const positions: bigint[] = [];
    for await (const event of client.subscribeAll({ afterPosition: 0 })) {
      positions.push(event.position);
      if (positions.length === 3) break;
    }
    assert.deepEqual(positions, [1n, 2n, 3n]);

    // An https:// address means TLS; the CA may be given as text.
    const https = connect(`https://${server.address}`, { tls: { ca: certs.ca.cert.toString("utf8") } });
    assert.deepEqual((await https.readAll().toArray()).map((e) => e.position), [1n, 2n, 3n]);
  });

  test("plaintext clients and clients that do not trust the CA cannot connect", async () => {
    const plaintext = connect(server.address, { callTimeoutMs: 5_000 });
    await failsWith(() => plaintext.readAll().toArray(), HighwaterError, Status.UNAVAILABLE);
    const other = makeCertificates("localhost");
    try {
      const untrusting = connect(server.address, { tls: { ca: other.ca.cert }, callTimeoutMs: 5_000 });
      await failsWith(() => untrusting.readAll().toArray(), HighwaterError, Status.UNAVAILABLE);
    } finally {
      other.remove();
    }
  });
});

describe("mutual TLS with a token", { timeout: 180_000 }, () => {
  let certs: Certificates;
  let authFile: string;
  let server: TestServer;
  const clients: Client[] = [];

  before(async () => {
    certs = makeCertificates("localhost");
    authFile = writeAuthFile();
    server = new TestServer({
      args: [
        "--tls-cert", certs.server.certFile, "--tls-key", certs.server.keyFile,
        "--tls-client-ca", certs.ca.certFile, "--auth-file", authFile,
      ],
      host: "localhost",
      clientOptions: { tls: { ca: certs.ca.cert, cert: certs.client.cert, key: certs.client.key } },
    });
    await server.start();
  });

  after(async () => {
    for (const client of clients) client.close();
    try {
      await server?.dispose();
    } finally {
      certs?.remove();
      if (authFile) rmSync(path.dirname(authFile), { recursive: true, force: true });
    }
  });

  test("a client certificate and a token are both needed", async () => {
    const connect = (options: ClientOptions) => {
      const client = new Client(server.address, { callTimeoutMs: 10_000, ...options });
      clients.push(client);
      return client;
    };
    const withCert = { ca: certs.ca.cert, cert: certs.client.cert, key: certs.client.key };
    const client = connect({ tls: withCert, token: TOKENS.write });
    await client.append("cart-1", events(1));
    assert.deepEqual((await client.readAll().toArray()).map((e) => e.position), [1n]);

    const noToken = connect({ tls: withCert });
    await failsWith(() => noToken.readAll().toArray(), UnauthenticatedError, Status.UNAUTHENTICATED);
    const noCert = connect({ tls: { ca: certs.ca.cert }, token: TOKENS.write, callTimeoutMs: 5_000 });
    await failsWith(() => noCert.readAll().toArray(), HighwaterError, Status.UNAVAILABLE);
  });
});

test("TLS options are checked before anything is sent", () => {
  const ca = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
  assert.throws(() => new Client("127.0.0.1:1", { tls: { ca, cert: ca } }), /together/);
  assert.throws(() => new Client("http://127.0.0.1:1", { tls: { ca } }), /plaintext/);
  assert.throws(() => new Client("127.0.0.1:1", { tls: { ca: "/etc/ssl/ca.pem" } }), /PEM/);
  new Client("https://127.0.0.1:1").close(); // TLS with Node's trusted CAs
});
