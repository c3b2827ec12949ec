import { Code } from "@connectrpc/connect";
import type { Command, OptionValues } from "commander";
import { Context, type GlobalOptions, type ProgramDeps } from "./context.js";
import { CliError, type ErrorContext, toCliError } from "./errors.js";

/** What to suggest when a command fails with NotFound or AlreadyExists. */
export type CommandHints = Pick<ErrorContext, "notFoundHint" | "conflictHint">;

export type Action = (ctx: Context, args: string[], opts: OptionValues) => Promise<void>;

/** Wraps a command's action: builds its Context, closes the clients, and turns failures into CliErrors. */
export type Act = (
  hints: CommandHints | ((args: string[]) => CommandHints),
  action: Action,
) => (...commanderArgs: unknown[]) => Promise<void>;

export function makeAct(deps: ProgramDeps): Act {
  return (hints, action) =>
    async (...commanderArgs: unknown[]) => {
      const cmd = commanderArgs[commanderArgs.length - 1] as Command;
      const args = cmd.processedArgs.map((a: unknown) => (a === undefined ? "" : String(a)));
      const h = typeof hints === "function" ? hints(args) : hints;
      let ctx: Context | undefined;
      try {
        ctx = new Context(deps, cmd.optsWithGlobals<GlobalOptions>());
        await action(ctx, args, cmd.opts());
      } catch (err) {
        throw toCliError(err, { server: ctx?.server, ...h });
      } finally {
        ctx?.close();
      }
    };
}

/** For repeatable options: `--label a=1 --label b=2`. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** Page size asked of the controller when following next_page_token. */
export const PAGE_SIZE = 200;

/** Follows next_page_token to the end and returns every item. */
export async function collectPages<T>(
  fetch: (pageToken: string) => Promise<{ items: T[]; next: string }>,
): Promise<T[]> {
  const all: T[] = [];
  const seen = new Set<string>();
  let token = "";
  for (;;) {
    const { items, next } = await fetch(token);
    all.push(...items);
    if (!next) return all;
    if (seen.has(next)) {
      throw new CliError(Code.Internal, `the controller returned page token ${JSON.stringify(next)} twice`);
    }
    seen.add(next);
    token = next;
  }
}

/** `Examples:` help text, shown after a command's options. */
export function examples(...lines: string[]): string {
  return `\nExamples:\n${lines.map((l) => (l.startsWith("#") ? `  ${l}` : `  $ ${l}`)).join("\n")}\n`;
}
