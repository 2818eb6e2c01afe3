// Commands the CLI prints for the user to run ("Resume with: ...") must work as printed: written the
// way this process was started, since `thinktune` is on the PATH only after `npm link` or a global
// install, and `npm run train` passes flags after `--`.
import { realpathSync } from "node:fs";
import path from "node:path";

function realpath(file: string): string | undefined {
  try {
    return realpathSync(file);
  } catch {
    return undefined;
  }
}

/** The `thinktune` on the PATH, when it is this very CLI. */
function thinktuneOnPath(self: string): boolean {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (dir !== "" && realpath(path.join(dir, "thinktune")) === self) return true;
  }
  return false;
}

/** How to run `thinktune <command> <args>` the way this process was started. */
export function userCommand(command: string, ...args: string[]): string {
  const quote = (arg: string) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`);
  const rest = args.length > 0 ? ` ${args.map(quote).join(" ")}` : "";
  const script = process.argv[1] ?? "";
  const self = realpath(script);
  const lifecycle = process.env.npm_lifecycle_event;
  // `npm run train` / `npm run chat` in the clone: the script already names the command
  if (process.env.npm_command === "run-script" && lifecycle === command) return `npm run ${command} --${rest}`;
  if (self && thinktuneOnPath(self)) return `thinktune ${command}${rest}`;
  if (process.env.npm_command === "exec") return `npx thinktune ${command}${rest}`;
  const relative = path.relative(process.cwd(), script) || script;
  // node's own flags too (--import tsx runs the TypeScript sources)
  const node = ["node", ...process.execArgv].join(" ");
  return `${node} ${quote(relative)} ${command}${rest}`;
}
