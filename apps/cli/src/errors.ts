import { Code, ConnectError } from "@connectrpc/connect";
import { StowageError } from "@stowage/core";
import { grpcStatusOf } from "@stowage/wire";
import { CommanderError } from "commander";

/** Exit codes of stowctl. Stable: scripts depend on them, and `stowctl --help` documents them. */
export const ExitCode = {
  ok: 0,
  error: 1,
  usage: 2,
  notFound: 3,
  conflict: 4,
  exhausted: 5,
  precondition: 6,
  unavailable: 7,
  timeout: 8,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** The exit-code table as shown in `stowctl --help`. */
export const EXIT_CODE_HELP = `Exit codes:
  0  ok
  1  other error (internal, permission, a volume that ended in error)
  2  bad usage or invalid argument (checked before anything is sent)
  3  not found
  4  already exists or conflict
  5  resource exhausted (no pool has the capacity)
  6  failed precondition (the resource is not in a state that allows it)
  7  unavailable: cannot reach the controller
  8  timed out (waiting for a volume, or a call past --timeout)`;

/** The one mapping from a gRPC status code to a stowctl exit code. */
export function exitCodeFor(code: Code): ExitCodeValue {
  switch (code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
      return ExitCode.usage;
    case Code.NotFound:
      return ExitCode.notFound;
    case Code.AlreadyExists:
    case Code.Aborted:
      return ExitCode.conflict;
    case Code.ResourceExhausted:
      return ExitCode.exhausted;
    case Code.FailedPrecondition:
      return ExitCode.precondition;
    case Code.Unavailable:
      return ExitCode.unavailable;
    case Code.DeadlineExceeded:
      return ExitCode.timeout;
    default:
      return ExitCode.error;
  }
}

/** An error stowctl reports itself: a one-line message and the gRPC code that picks the exit code. */
export class CliError extends Error {
  override readonly name = "CliError";
  constructor(
    readonly code: Code,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  get exitCode(): ExitCodeValue {
    return exitCodeFor(this.code);
  }
}

/** Bad usage: exits 2 before anything is sent to the controller. */
export function usageError(message: string): CliError {
  return new CliError(Code.InvalidArgument, message);
}

/** What the failing command was about, so messages can say what to do next. */
export interface ErrorContext {
  /** The controller's URL, for "cannot reach" messages. */
  server?: string;
  /** For NotFound, e.g. "list them with `stowctl volume list`". */
  notFoundHint?: string;
  /** For AlreadyExists, e.g. "pick another name or look at it with `stowctl volume get NAME`". */
  conflictHint?: string;
}

const NETWORK_ERRNOS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ETIMEDOUT",
  "EPIPE",
  "ERR_HTTP2_ERROR",
  "ERR_HTTP2_SESSION_ERROR",
  "ERR_HTTP2_STREAM_CANCEL",
  "ERR_HTTP2_GOAWAY_SESSION",
]);

/** The errno of a network failure somewhere in the cause chain, when the controller could not be reached. */
function networkErrno(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  let cur: unknown = err;
  while (cur instanceof Error && !seen.has(cur)) {
    seen.add(cur);
    const code = (cur as { code?: unknown }).code;
    if (typeof code === "string" && NETWORK_ERRNOS.has(code)) return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

function withHint(message: string, hint: string | undefined): string {
  const m = message.trim().replace(/[.:]$/, "");
  return hint ? `${m}: ${hint}` : m;
}

function firstLine(s: string): string {
  return s.split("\n", 1)[0]!.trim();
}

/** For each status: the text when the controller sent none, and what to do next. */
const HINTS: Partial<Record<Code, (ctx: ErrorContext, server: string) => [string, string | undefined]>> = {
  [Code.NotFound]: (ctx) => ["not found", ctx.notFoundHint],
  [Code.AlreadyExists]: (ctx) => ["already exists", ctx.conflictHint],
  [Code.Aborted]: () => ["aborted by a concurrent change", "it changed while we worked on it: try again"],
  [Code.InvalidArgument]: () => ["invalid argument", "see the command's --help"],
  [Code.OutOfRange]: () => ["invalid argument", "see the command's --help"],
  [Code.ResourceExhausted]: () => [
    "no capacity",
    "no pool can take it; see why with `stowctl placement explain --size SIZE`, or free space",
  ],
  [Code.FailedPrecondition]: () => [
    "failed precondition",
    "the resource is not in a state that allows this; check it with its `get` command",
  ],
  [Code.Unauthenticated]: () => ["unauthenticated", "set a token with --token or STOWAGE_TOKEN"],
  [Code.PermissionDenied]: () => [
    "permission denied",
    "your token's role does not allow this; ask for an operator or admin token",
  ],
  [Code.Unimplemented]: (_ctx, server) => [
    "not implemented",
    `the controller at ${server} does not support this call: upgrade it or use a matching stowctl`,
  ],
};

/** Turns anything thrown while running a command into a CliError with a one-line, actionable message. */
export function toCliError(err: unknown, ctx: ErrorContext = {}): CliError {
  if (err instanceof CliError) return err;
  // Local domain errors take the gRPC code the controller would send, so the exit mapping is the same.
  if (err instanceof StowageError)
    return new CliError(grpcStatusOf(err.code) as Code, firstLine(err.message));
  if (err instanceof CommanderError) return new CliError(Code.InvalidArgument, firstLine(err.message));
  const server = ctx.server ?? "the configured server";
  const errno = networkErrno(err);
  if (errno !== undefined) {
    return new CliError(
      Code.Unavailable,
      `cannot reach the controller at ${server} (${errno}): is it running? start a local cluster with \`npm run up\` or set --server/STOWAGE_SERVER`,
      { cause: err },
    );
  }
  if (!(err instanceof ConnectError)) {
    const message = err instanceof Error ? err.message : String(err);
    return new CliError(Code.Unknown, firstLine(message) || "unexpected error", { cause: err });
  }
  const msg = firstLine(err.rawMessage);
  let text: string;
  if (err.code === Code.Unavailable) {
    text = `cannot reach the controller at ${server}${msg ? ` (${msg})` : ""}: is it running? start a local cluster with \`npm run up\` or set --server/STOWAGE_SERVER`;
  } else if (err.code === Code.DeadlineExceeded) {
    text = `the controller at ${server} did not answer in time${msg && msg !== "the operation timed out" ? ` (${msg})` : ""}: raise --timeout or check that the controller is healthy`;
  } else if (err.code === Code.Canceled) {
    text = msg || "canceled";
  } else {
    const [fallback, hint] = HINTS[err.code]?.(ctx, server) ?? [
      "the controller failed",
      "this is a controller fault; see its logs (and report it if it repeats)",
    ];
    text = withHint(msg || fallback, hint);
  }
  return new CliError(err.code, text, { cause: err });
}
