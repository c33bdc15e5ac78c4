// Certificates for the TLS tests, made at test time with the `openssl` command: a CA, a server
// certificate for "localhost" and a client certificate, both signed by the CA. Keys are ECDSA
// P-256 (PKCS#8 PEM).

import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";

/** A certificate and its key: file paths (for the server's flags) and PEM text (for clients). */
export interface KeyPair {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
}

export interface Certificates {
  /** The folder holding every file; `remove()` deletes it. */
  dir: string;
  ca: KeyPair;
  server: KeyPair;
  client: KeyPair;
  remove(): void;
}

function openssl(cwd: string, ...args: string[]): void {
  const result = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  if (result.error) {
    throw new Error(`cannot run openssl (is it installed?): ${result.error.message}`);
  }
  if (result.status !== 0) {
    throw new Error(`openssl ${args.join(" ")} failed (${result.status}):\n${result.stderr}`);
  }
}

function pair(dir: string, name: string): KeyPair {
  const certFile = path.join(dir, `${name}.pem`);
  const keyFile = path.join(dir, `${name}.key`);
  return { certFile, keyFile, cert: readFileSync(certFile), key: readFileSync(keyFile) };
}

const EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/** Makes a CA and, signed by it, a server certificate for `serverName` and a client certificate. */
export function makeCertificates(serverName = "localhost"): Certificates {
  const dir = mkdtempSync(path.join(tmpdir(), "hw-ts-tls-"));
  try {
    openssl(dir, "req", "-x509", ...EC_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
      "-subj", "/CN=Highwater test CA",
      "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
      "-addext", "keyUsage=critical,keyCertSign,cRLSign");
    const issue = (name: string, subject: string, extensions: string) => {
      writeFileSync(path.join(dir, `${name}.ext`), extensions);
      openssl(dir, "req", "-new", ...EC_KEY, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject);
      openssl(dir, "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key",
        "-set_serial", `0x${randomBytes(12).toString("hex")}`, "-days", "1", "-sha256",
        "-extfile", `${name}.ext`, "-out", `${name}.pem`);
    };
    issue("server", `/CN=${serverName}`,
      `basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n` +
        `extendedKeyUsage=serverAuth\nsubjectAltName=DNS:${serverName}\n`);
    issue("client", "/CN=billing-service",
      "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n");
    return {
      dir,
      ca: pair(dir, "ca"),
      server: pair(dir, "server"),
      client: pair(dir, "client"),
      remove: () => rmSync(dir, { recursive: true, force: true }),
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
