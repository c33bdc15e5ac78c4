// Builds dist/: the CommonJS build (tsconfig.json: the package, its tests and examples) and the
// ES module build of the package (tsconfig.esm.json, into dist/esm), which a package.json of its
// own marks as ES modules. package.json's "exports" sends `import` to one and `require` to the
// other.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const tsc = join("node_modules", ".bin", "tsc");
rmSync("dist", { recursive: true, force: true });
execFileSync(tsc, ["-p", "tsconfig.json"], { stdio: "inherit" });
execFileSync(tsc, ["-p", "tsconfig.esm.json"], { stdio: "inherit" });
mkdirSync(join("dist", "esm"), { recursive: true });
writeFileSync(join("dist", "esm", "package.json"), '{ "type": "module" }\n');
