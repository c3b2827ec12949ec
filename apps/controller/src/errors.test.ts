import { Code, ConnectError } from "@connectrpc/connect";
import { invalidArgument, StowageError } from "@stowage/core";
import { describe, expect, it } from "vitest";
import { MAX_ERROR_MESSAGE, toConnectError } from "./errors.js";

/** A logger that keeps what it was given. */
function recordingLog() {
  const lines: { obj: Record<string, unknown>; msg: string }[] = [];
  const log = { error: (obj: Record<string, unknown>, msg: string) => lines.push({ obj, msg }) };
  return { lines, log: log as unknown as Parameters<typeof toConnectError>[1] };
}

describe("toConnectError", () => {
  it("maps a domain error by its code and keeps its message", () => {
    const e = toConnectError(invalidArgument("size_bytes must be positive"));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage).toBe("size_bytes must be positive");
  });

  it("clips a message that quotes a huge input, so HTTP/2 can carry the trailer", () => {
    const value = "x".repeat(3 * 1024 * 1024);
    const e = toConnectError(invalidArgument(`label value ${JSON.stringify(value)} for k is not valid`));
    expect(e.code).toBe(Code.InvalidArgument);
    expect(e.rawMessage.length).toBeLessThanOrEqual(MAX_ERROR_MESSAGE + 40);
    expect(e.rawMessage).toMatch(/^label value "x+… \(\d+ more characters\)$/);
  });

  it("hides an unexpected error's message from the client and logs it with the error id it hands out", () => {
    const { lines, log } = recordingLog();
    const raw = new Error('relation "secret_internal_table" does not exist');
    const e = toConnectError(raw, log);
    expect(e.code).toBe(Code.Internal);
    expect(e.rawMessage).not.toContain("secret_internal_table");
    const id = /error id (err-[0-9a-f]{12})/.exec(e.rawMessage)?.[1];
    expect(id).toBeDefined();
    expect(lines).toHaveLength(1);
    expect(lines[0]!.obj).toMatchObject({ err: raw, errorId: id });
  });

  it.each([
    ["40001", Code.Aborted],
    ["40P01", Code.Aborted],
    ["08006", Code.Unavailable],
    ["57P01", Code.Unavailable],
    ["CONNECTION_CLOSED", Code.Unavailable],
    ["ECONNREFUSED", Code.Unavailable],
    ["23505", Code.Internal],
  ])("an error with code %s is %s, which tells a client whether to retry", (code, want) => {
    const err = Object.assign(new Error("from the database"), { code });
    const e = toConnectError(err, recordingLog().log);
    expect(e.code).toBe(want);
    expect(e.rawMessage).not.toContain("from the database");
  });

  it("passes a ConnectError through and wraps nothing twice", () => {
    const c = new ConnectError("already mapped", Code.NotFound);
    expect(toConnectError(c)).toBe(c);
    expect(toConnectError(new StowageError("not_found", "volume x not found")).code).toBe(Code.NotFound);
  });
});
