import { create } from "@bufbuild/protobuf";
import { ERROR_CODES, type ErrorCode, type ErrorRecord, StowageError } from "@stowage/core";
import { type ErrorDetail, ErrorDetailSchema } from "@stowage/proto";

type ToolFields = Omit<ErrorRecord, "code" | "message">;

export function errorRecordToWire(e: ErrorRecord): ErrorDetail {
  return create(ErrorDetailSchema, {
    code: e.code,
    message: e.message,
    tool: e.tool ?? "",
    argv: e.argv ?? [],
    exitCode: e.exitCode,
    stderr: e.stderr ?? "",
    timedOut: e.timedOut ?? false,
  });
}

/** The fields an ErrorDetail carries; a missing detail or message says `fallback`, a missing code is internal. */
export function errorRecordFromWire(e: ErrorDetail | undefined, fallback: string): ErrorRecord {
  if (!e) return { code: "internal", message: fallback };
  return { code: e.code || "internal", message: e.message || fallback, ...toolFieldsFromWire(e) };
}

function toolFieldsFromWire(e: ErrorDetail): ToolFields {
  const out: ToolFields = {};
  if (e.tool) out.tool = e.tool;
  if (e.argv.length) out.argv = e.argv;
  if (e.exitCode !== undefined) out.exitCode = e.exitCode;
  if (e.stderr) out.stderr = e.stderr;
  if (e.timedOut) out.timedOut = true;
  return out;
}

/** The tool fields of a thrown error: on the error itself (the runner's ToolError) or in its details. */
function toolFieldsOf(err: unknown, details: Record<string, unknown>): ToolFields {
  const t = (typeof err === "object" && err !== null ? err : {}) as Readonly<ToolFields>;
  const d = details as Readonly<ToolFields>;
  const argv = t.argv ?? d.argv;
  return {
    tool: t.tool ?? d.tool,
    argv: argv && [...argv],
    exitCode: t.exitCode ?? d.exitCode,
    stderr: t.stderr ?? d.stderr,
    timedOut: t.timedOut ?? d.timedOut,
  };
}

/** Anything thrown as an ErrorDetail: normalised to a StowageError, with a tool failure's fields. */
export function stowageErrorToWire(err: unknown): ErrorDetail {
  const e = StowageError.from(err);
  return errorRecordToWire({ code: e.code, message: e.message, ...toolFieldsOf(err, e.details) });
}

export function isErrorCode(code: string): code is ErrorCode {
  return (ERROR_CODES as readonly string[]).includes(code);
}

/** An ErrorDetail as a StowageError (a code this build does not know is internal); tool fields become details. */
export function stowageErrorFromWire(e: ErrorDetail | undefined, fallback: string): StowageError {
  const f = errorRecordFromWire(e, fallback);
  const { code, message, ...details } = f;
  return new StowageError(isErrorCode(code) ? code : "internal", message, details);
}
