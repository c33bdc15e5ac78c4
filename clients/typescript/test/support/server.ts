// Starts real Highwater servers for the tests: the binary in HIGHWATER_BIN (default
// <repo>/target/debug/highwater), each test file on a freshly named database of the PostgreSQL in
// DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres), dropped at the end.

import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import * as path from "node:path";
import { Client, type ClientOptions } from "../../src/index";

/** The repository root: the folder above clients/typescript that holds proto/. */
export const REPO_ROOT = findRepoRoot(__dirname);

export const ADMIN_DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

export const HIGHWATER_BIN = process.env.HIGHWATER_BIN ?? path.join(REPO_ROOT, "target", "debug", "highwater");

export const EXAMPLE_PROJECTIONS = path.join(REPO_ROOT, "examples", "projections");

function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(path.join(dir, "proto", "highwater", "v1", "event_store.proto"))) {
      return dir;
    }
    const parent = path.dirname(dir);
    if (parent === dir) {
      throw new Error(`no repository root (with proto/highwater/v1) above ${start}`);
    }
    dir = parent;
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** The URL of database `name` on the same PostgreSQL as the admin URL. */
export function databaseUrl(name: string): string {
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Runs SQL with psql and returns its unaligned, tuples-only output. */
export function psql(url: string, sql: string): string {
  const result = spawnSync("psql", [url, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql], {
    encoding: "utf8",
  });
  if (result.error) {
    throw result.error;
  }
  if (result.status !== 0) {
    throw new Error(`psql failed (${result.status}): ${result.stderr}`);
  }
  return result.stdout.trim();
}

export interface ServerOptions {
  /** Load the example projections (cart_summary). */
  projections?: boolean;
  /** Extra command-line arguments for `highwater serve` (such as --auth-file or --tls-cert). */
  args?: string[];
  /**
   * The host name clients dial (default 127.0.0.1), such as `localhost` for a TLS certificate
   * made for that name. The server always listens on 127.0.0.1.
   */
  host?: string;
  /** What a client needs to reach the server (such as `tls`), for the readiness probe. */
  clientOptions?: ClientOptions;
}

/**
 * One Highwater server on its own database and port. `start()` and `stop()` may be called again
 * to restart it on the same port and database; `dispose()` stops it and drops the database.
 */
export class TestServer {
  readonly database = `hw_ts_${randomBytes(6).toString("hex")}`;
  readonly databaseUrl = databaseUrl(this.database);
  port = 0;
  private child: ChildProcess | undefined;
  private exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | undefined;
  private output: string[] = [];

  constructor(private readonly options: ServerOptions = {}) {}

  /** What clients dial: the host (127.0.0.1 unless told) and the port. */
  get address(): string {
    return `${this.options.host ?? "127.0.0.1"}:${this.port}`;
  }

  /** Where the server listens. */
  get listen(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Everything the server printed, across restarts. */
  get log(): string {
    return this.output.join("");
  }

  /** Starts the server (on the same port as before, if it ran before) and waits until it is SERVING. */
  async start(): Promise<void> {
    if (this.child) {
      throw new Error("server already running");
    }
    if (!existsSync(HIGHWATER_BIN)) {
      throw new Error(
        `no Highwater binary at ${HIGHWATER_BIN}: build it (cargo build) or set HIGHWATER_BIN`,
      );
    }
    if (this.port === 0) {
      this.port = await freePort();
    }
    const args = ["serve", "--listen", this.listen, "--database-url", this.databaseUrl];
    if (this.options.projections) {
      args.push("--projections", EXAMPLE_PROJECTIONS);
    }
    args.push(...(this.options.args ?? []));
    const child = spawn(HIGHWATER_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    // If the test process dies without stopping the server, take the server down with it.
    const killOnExit = () => child.kill("SIGKILL");
    process.once("exit", killOnExit);
    child.once("exit", () => process.removeListener("exit", killOnExit));
    this.output.push(`--- started: ${HIGHWATER_BIN} ${args.join(" ")}\n`);
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => this.output.push(chunk));
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => this.output.push(chunk));
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.output.push(`--- exited: code ${code} signal ${signal}\n`);
        resolve({ code, signal });
      });
    });
    await this.waitReady(child);
  }

  private async waitReady(child: ChildProcess): Promise<void> {
    // Health needs no token: the probe only needs what it takes to connect (TLS).
    const client = new Client(this.address, this.options.clientOptions);
    const deadline = Date.now() + 60_000;
    try {
      for (;;) {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`server exited during startup:\n${this.log}`);
        }
        try {
          const server = await client.health("");
          const store = await client.health("highwater.v1.EventStoreService");
          if (server === "SERVING" && store === "SERVING") {
            return;
          }
        } catch {
          // not listening yet
        }
        if (Date.now() > deadline) {
          throw new Error(`server not SERVING after 60 s:\n${this.log}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    } finally {
      client.close();
    }
  }

  /** Stops the server with SIGTERM and returns how it exited (SIGKILL after 30 s). */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const child = this.child;
    const exited = this.exited;
    if (!child || !exited) {
      return { code: null, signal: null };
    }
    child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.output.push("--- no exit 30 s after SIGTERM: SIGKILL\n");
        child.kill("SIGKILL");
        resolve();
      }, 30_000);
    });
    await Promise.race([exited, killed]);
    const result = await exited;
    clearTimeout(timer);
    this.child = undefined;
    this.exited = undefined;
    if (result.code !== 0) {
      process.stderr.write(`Highwater on ${this.address} exited with code ${result.code}, signal ${result.signal}:\n${this.log}\n`);
    }
    return result;
  }

  /** Stops the server and drops its database. */
  async dispose(): Promise<void> {
    try {
      await this.stop();
      if (process.env.HIGHWATER_TEST_LOGS) {
        process.stderr.write(`Highwater on ${this.address} (${this.database}):\n${this.log}\n`);
      }
    } finally {
      psql(ADMIN_DATABASE_URL, `DROP DATABASE IF EXISTS "${this.database}" WITH (FORCE)`);
    }
  }

  /** Runs SQL on the server's database. */
  query(sql: string): string {
    return psql(this.databaseUrl, sql);
  }
}

/** Polls `check` until it returns a value other than undefined, or throws after `timeoutMs`. */
export async function eventually<T>(check: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000, what = "condition"): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
