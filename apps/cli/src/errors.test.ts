import { Code, ConnectError } from "@connectrpc/connect";
import { notFound } from "@stowage/core";
import { describe, expect, it } from "vitest";
import { ExitCode, exitCodeFor, toCliError } from "./errors.js";

describe("exitCodeFor", () => {
  it("maps every gRPC code to a documented exit code", () => {
    const table = Object.fromEntries(
      Object.values(Code)
        .filter((c): c is Code => typeof c === "number")
        .map((c) => [Code[c], exitCodeFor(c)]),
    );
    expect(table).toEqual({
      Canceled: 1,
      Unknown: 1,
      InvalidArgument: 2,
      DeadlineExceeded: 8,
      NotFound: 3,
      AlreadyExists: 4,
      PermissionDenied: 1,
      ResourceExhausted: 5,
      FailedPrecondition: 6,
      Aborted: 4,
      OutOfRange: 2,
      Unimplemented: 1,
      Internal: 1,
      Unavailable: 7,
      DataLoss: 1,
      Unauthenticated: 1,
    });
  });
});

describe("toCliError", () => {
  it("recognises a refused connection anywhere in the cause chain", () => {
    const cause = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
    const e = toCliError(new ConnectError("oops", Code.Internal, undefined, undefined, cause), {
      server: "http://127.0.0.1:1",
    });
    expect(e.exitCode).toBe(ExitCode.unavailable);
    expect(e.message).toBe(
      "cannot reach the controller at http://127.0.0.1:1 (ECONNREFUSED): is it running? start a local cluster with `npm run up` or set --server/STOWAGE_SERVER",
    );
  });

  it("keeps the server's message on one line and adds the hint", () => {
    const e = toCliError(new ConnectError("volume x not found\nstack...", Code.NotFound), {
      notFoundHint: "list them with `stowctl volume list`",
    });
    expect(e.exitCode).toBe(3);
    expect(e.message).toBe("volume x not found: list them with `stowctl volume list`");
  });

  it("maps domain errors from @stowage/core by their code", () => {
    expect(toCliError(notFound("nope")).exitCode).toBe(3);
  });

  it("treats anything else as exit 1", () => {
    expect(toCliError(new TypeError("boom")).exitCode).toBe(1);
  });
});
