// Builds dist/: the CommonJS build (tsconfig.json: the package, its tests and examples), and
// dist/esm, the ES module entry point: a module that re-exports the CommonJS build, so that code
// that imports the package and code that requires it share one copy of it (one Client, one
// NotFoundError for `instanceof`). package.json's "exports" sends `import` to one and `require`
// to the other.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

rmSync("dist", { recursive: true, force: true });
execFileSync(join("node_modules", ".bin", "tsc"), ["-p", "tsconfig.json"], { stdio: "inherit" });
mkdirSync(join("dist", "esm"), { recursive: true });
const reexport = 'export * from "../src/index.js";\n';
writeFileSync(join("dist", "esm", "index.mjs"), reexport);
writeFileSync(join("dist", "esm", "index.d.mts"), reexport);
