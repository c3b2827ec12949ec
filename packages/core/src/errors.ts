/** Domain error codes. They map one-to-one onto gRPC status codes at the API edge. */
export const ERROR_CODES = [
  "invalid_argument",
  "not_found",
  "already_exists",
  "resource_exhausted",
  "failed_precondition",
  "aborted",
  "unavailable",
  "deadline_exceeded",
  "unimplemented",
  "permission_denied",
  "unauthenticated",
  "internal",
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/**
 * An error as a failed operation records it. Codes are free strings here (the controller records its own, like
 * "expired"); a tool failure adds the tool, its argv, exit code and stderr.
 */
export interface ErrorRecord {
  code: string;
  message: string;
  tool?: string;
  argv?: string[];
  exitCode?: number;
  stderr?: string;
  timedOut?: boolean;
}

/** The one error class of the domain: a code, a message that says what to do next, and optional details. */
export class StowageError extends Error {
  override readonly name = "StowageError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Normalises anything thrown into a StowageError (unknown errors become `internal`). */
  static from(err: unknown): StowageError {
    if (err instanceof StowageError) return err;
    if (err instanceof Error) return new StowageError("internal", err.message, {}, { cause: err });
    return new StowageError("internal", String(err));
  }
}

export const invalidArgument = (message: string, details?: Record<string, unknown>) =>
  new StowageError("invalid_argument", message, details);
export const notFound = (message: string, details?: Record<string, unknown>) =>
  new StowageError("not_found", message, details);
export const alreadyExists = (message: string, details?: Record<string, unknown>) =>
  new StowageError("already_exists", message, details);
export const failedPrecondition = (message: string, details?: Record<string, unknown>) =>
  new StowageError("failed_precondition", message, details);
export const resourceExhausted = (message: string, details?: Record<string, unknown>) =>
  new StowageError("resource_exhausted", message, details);
