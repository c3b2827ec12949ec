import { randomBytes } from "node:crypto";
import { type Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { type ErrorCode, StowageError } from "@stowage/core";
import type { Logger } from "@stowage/telemetry";
import { grpcStatusOf } from "@stowage/wire";

/**
 * The longest message a client gets. Messages may quote what the caller sent (a name, a label value); HTTP/2
 * cannot carry a multi-megabyte trailer, so a longer one is cut here, whatever produced it.
 */
export const MAX_ERROR_MESSAGE = 1024;

/** SQLSTATEs after which the same call may simply be retried: serialisation failure and deadlock. */
const RETRY_SQLSTATES = new Set(["40001", "40P01"]);
/** The database is away: connection exceptions (class 08), shutting down, not accepting connections yet, full. */
const UNAVAILABLE_SQLSTATE = /^(08|57P0[1-3]|53300)/;
/** What a lost or refused database connection looks like from the client library (postgres.js) or the OS. */
const UNAVAILABLE_ERRNO = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
]);

/**
 * Domain errors become gRPC statuses here and nowhere else (the code table is the wire's). An error that is not
 * the domain's says nothing of the controller's insides to the client: a database that is away is UNAVAILABLE
 * and a serialisation conflict ABORTED (both worth a retry), anything else INTERNAL with an error id that the
 * controller's log carries beside the real error.
 */
export function toConnectError(err: unknown, log?: Logger): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof StowageError) {
    return new ConnectError(clip(err.message), grpcStatusOf(err.code) as Code, undefined, undefined, err);
  }
  const code = (err as { code?: unknown } | null)?.code;
  const kind: ErrorCode =
    typeof code === "string" && RETRY_SQLSTATES.has(code)
      ? "aborted"
      : typeof code === "string" && (UNAVAILABLE_SQLSTATE.test(code) || UNAVAILABLE_ERRNO.has(code))
        ? "unavailable"
        : "internal";
  const errorId = `err-${randomBytes(6).toString("hex")}`;
  log?.error({ err, errorId }, "request failed with an unexpected error");
  const message =
    kind === "aborted"
      ? `the request conflicted with another one; retry it (error id ${errorId})`
      : kind === "unavailable"
        ? `the controller cannot reach its database; retry later (error id ${errorId})`
        : `internal error (error id ${errorId}; the controller's log has the details)`;
  const e = new StowageError(kind, message, { errorId }, { cause: err });
  return new ConnectError(message, grpcStatusOf(kind) as Code, undefined, undefined, e);
}

function clip(message: string): string {
  if (message.length <= MAX_ERROR_MESSAGE) return message;
  return `${message.slice(0, MAX_ERROR_MESSAGE - 40)}… (${message.length - MAX_ERROR_MESSAGE + 40} more characters)`;
}

export function createErrorInterceptor(log: Logger): Interceptor {
  return (next) => async (req) => {
    try {
      return await next(req);
    } catch (err) {
      throw toConnectError(err, log);
    }
  };
}
