// thinktune as a Node service gets it: `npm pack`, then a fresh project installs the tarball (the addon
// built from source by the install script, CPU only here to save time), imports the library and runs
// the CLI through npx. Offline as far as npm's cache allows: the project's lock is this repository's,
// so npm fetches nothing the repository's own install did not already bring.
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const projectRoot = path.resolve(import.meta.dirname, "..", "..");
let work: string;
let app: string;
let tarball: string;

interface LockEntry {
  version?: string;
  dev?: boolean;
  [key: string]: unknown;
}

/** The app's lock: this repository's runtime packages, and thinktune from the tarball. */
async function writeAppProject(dir: string, tarballName: string): Promise<void> {
  const own = JSON.parse(await readFile(path.join(projectRoot, "package.json"), "utf8"));
  const lock = JSON.parse(await readFile(path.join(projectRoot, "package-lock.json"), "utf8")) as { packages: Record<string, LockEntry> };
  const spec = `file:../${tarballName}`;
  const packages: Record<string, unknown> = {
    "": { name: "app", version: "1.0.0", dependencies: { thinktune: spec } },
    "node_modules/thinktune": { version: own.version, resolved: spec, hasInstallScript: true, license: own.license, dependencies: own.dependencies, bin: own.bin, engines: own.engines },
  };
  for (const [key, entry] of Object.entries(lock.packages)) if (key !== "" && !entry.dev) packages[key] = entry;
  await writeFile(path.join(dir, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", private: true, type: "module", dependencies: { thinktune: spec } }, null, 2));
  await writeFile(path.join(dir, "package-lock.json"), JSON.stringify({ name: "app", version: "1.0.0", lockfileVersion: 3, requires: true, packages }, null, 2));
}

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), "thinktune-package-"));
  // dist/ is what npm test just built; --ignore-scripts skips building it again through "prepare"
  const { stdout } = await run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", work], { cwd: projectRoot, maxBuffer: 16 << 20 });
  tarball = (JSON.parse(stdout) as { filename: string }[])[0].filename;
  app = path.join(work, "app");
  await mkdir(app);
  await writeAppProject(app, tarball);
}, 120_000);
afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe("the npm package", () => {
  it("holds the built library, the CLI, the native sources and the demo, and is not private", async () => {
    const own = JSON.parse(await readFile(path.join(projectRoot, "package.json"), "utf8"));
    expect(own.private).toBeUndefined();
    const { stdout } = await run("tar", ["-tzf", path.join(work, tarball)]);
    const files = new Set(stdout.split("\n"));
    for (const file of ["dist/index.js", "dist/index.d.ts", "dist/cli/main.js", "scripts/build-native.mjs", "CMakeLists.txt", "binding.gyp", "models/tiny-r1.gguf", "examples/data/en.jsonl", "LICENSE"]) {
      expect(files, file).toContain(`package/${file}`);
    }
    expect([...files].some((file) => /^package\/native\/.+\.cpp$/.test(file))).toBe(true);
    expect([...files].filter((file) => file.startsWith("package/test/") || file.startsWith("package/src/") || file.startsWith("package/build/"))).toEqual([]);
    // a clone's tokenized caches (the demo writes one beside examples/data) stay out of the package
    expect([...files].filter((file) => file.includes("/.thinktune-cache/"))).toEqual([]);
  });

  it("installs into a fresh project, building the addon, and then imports and runs", async () => {
    const env = { ...process.env, THINKTUNE_CUDA: "off", XDG_CACHE_HOME: path.join(work, "user-cache") };
    await run("npm", ["ci", "--prefer-offline", "--no-audit", "--no-fund"], { cwd: app, env, timeout: 600_000, maxBuffer: 64 << 20 });
    expect(existsSync(path.join(app, "node_modules", "thinktune", "build", "Release", "thinktune.node"))).toBe(true);

    const imported = await run(process.execPath, ["--input-type=module", "-e", 'import { Trainer, Engine } from "thinktune"; console.log(typeof Trainer, typeof Engine);'], { cwd: app });
    expect(imported.stdout.trim()).toBe("function function");

    const version = await run("npx", ["thinktune", "--version"], { cwd: app, env });
    expect(version.stdout).toMatch(/^thinktune 0\.1\.0 \(backends: cpu\)/);

    // the demo defaults (embedded model and data) resolve inside the installed package
    await run("npx", ["thinktune", "train", "--max-steps", "1", "--preview-tokens", "0", "--out", "run"], { cwd: app, env, timeout: 300_000, maxBuffer: 16 << 20 });
    expect(existsSync(path.join(app, "run", "adapter", "adapter.gguf"))).toBe(true);
    // its tokenized data cache goes to the user's cache folder, not into node_modules
    expect(existsSync(path.join(app, "node_modules", "thinktune", "examples", ".thinktune-cache"))).toBe(false);
    expect((await readdir(path.join(work, "user-cache", "thinktune", "data"))).some((file) => file.endsWith(".bin"))).toBe(true);
  }, 900_000);

  it("says what to install when no C++ compiler is found", async () => {
    const emptyPath = path.join(work, "empty-bin");
    await mkdir(emptyPath, { recursive: true });
    const env = { ...process.env, PATH: emptyPath };
    delete env.CXX;
    const failure = await run(process.execPath, [path.join(projectRoot, "scripts", "build-native.mjs")], { cwd: projectRoot, env }).catch((error: { code: number; stderr: string }) => error);
    expect("code" in failure && failure.code).toBe(1);
    expect((failure as { stderr: string }).stderr).toContain("thinktune: no C++ compiler found (tried c++, g++, clang++)");
    expect((failure as { stderr: string }).stderr).toContain("build-essential");
  });
});
