#!/usr/bin/env node
// Records node-llama-cpp's per-platform prebuilt packages in package-lock.json when the registry this
// lock was made with did not serve them (npm then leaves them out, and `npm ci` refuses the lock).
// Each entry carries its os/cpu, so npm skips it on other platforms and fetches it where it applies.
// No "resolved" URL, as for every other entry: with omit-lockfile-registry-resolved (a common setting
// behind mirrors) npm would strip it on the next install and leave the lock changed in git.
import { readFileSync, writeFileSync } from "node:fs";

const lockPath = new URL("../package-lock.json", import.meta.url);
const lock = JSON.parse(readFileSync(lockPath, "utf8"));
const parent = lock.packages["node_modules/node-llama-cpp"];
const platforms = { linux: "linux", mac: "darwin", win: "win32" };
let added = 0;
for (const [name, version] of Object.entries(parent.optionalDependencies ?? {})) {
  const key = `node_modules/${name}`;
  if (lock.packages[key]) continue;
  const [platform, cpu] = name.replace("@node-llama-cpp/", "").split("-");
  if (!platforms[platform] || !cpu) throw new Error(`cannot tell the platform of ${name}`);
  lock.packages[key] = {
    version,
    cpu: [cpu],
    optional: true,
    os: [platforms[platform]],
  };
  added++;
}
lock.packages = Object.fromEntries(Object.entries(lock.packages).sort(([a], [b]) => (a === "" ? -1 : b === "" ? 1 : a < b ? -1 : 1)));
writeFileSync(lockPath, `${JSON.stringify(lock, null, 2)}\n`);
console.log(`lock-platform-prebuilts: added ${added} entr${added === 1 ? "y" : "ies"}`);
