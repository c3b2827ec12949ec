import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { ERROR_CODES, notFound, StowageError } from "@stowage/core";
import { ErrorDetailSchema } from "@stowage/proto";
import { describe, expect, it } from "vitest";
import {
  errorRecordFromWire,
  errorRecordToWire,
  stowageErrorFromWire,
  stowageErrorToWire,
} from "./errors.js";
import { GRPC_STATUS, grpcStatusOf } from "./grpc-status.js";

/** A tool failure as the runner throws it: its fields on the error itself. */
class FakeToolError extends StowageError {
  readonly tool = "qemu-img";
  readonly argv = ["create", "-f", "qcow2"];
  readonly exitCode = 1;
  readonly stderr = "no space";
  readonly timedOut = false;
  constructor() {
    super("internal", "qemu-img create failed");
  }
}

describe("errors on the wire", () => {
  it("a domain error goes out with its code and comes back as the same StowageError", () => {
    const back = stowageErrorFromWire(stowageErrorToWire(notFound("volume x not found")), "fallback");
    expect(back).toBeInstanceOf(StowageError);
    expect(back).toMatchObject({ code: "not_found", message: "volume x not found", details: {} });
  });

  it("carries a tool failure's fields, from the error or its details", () => {
    const d = stowageErrorToWire(new FakeToolError());
    expect(d).toMatchObject({
      code: "internal",
      tool: "qemu-img",
      argv: ["create", "-f", "qcow2"],
      exitCode: 1,
    });
    const viaDetails = stowageErrorToWire(
      new StowageError("unavailable", "rbd", { tool: "rbd", timedOut: true }),
    );
    expect(viaDetails).toMatchObject({ tool: "rbd", timedOut: true, argv: [] });
    expect(stowageErrorFromWire(d, "x").details).toEqual({
      tool: "qemu-img",
      argv: ["create", "-f", "qcow2"],
      exitCode: 1,
      stderr: "no space",
    });
  });

  it("normalises anything thrown, and reads an unknown code as internal", () => {
    expect(stowageErrorToWire(new Error("boom"))).toMatchObject({ code: "internal", message: "boom" });
    const odd = create(ErrorDetailSchema, { code: "exploded", message: "m" });
    expect(stowageErrorFromWire(odd, "x").code).toBe("internal");
    expect(stowageErrorFromWire(undefined, "no details")).toMatchObject({
      code: "internal",
      message: "no details",
    });
  });

  it("keeps recorded fields as they are, codes included", () => {
    const rec = { code: "expired", message: "reservation expired", tool: "lvcreate", exitCode: 5 };
    expect(errorRecordFromWire(errorRecordToWire(rec), "x")).toEqual(rec);
    expect(errorRecordFromWire(undefined, "lost")).toEqual({ code: "internal", message: "lost" });
  });

  it("maps every error code to the gRPC status Connect names the same", () => {
    // invalid_argument is Code.InvalidArgument, and so on.
    const connectName = (c: string) =>
      c.replace(/(^|_)([a-z])/g, (_, __, l: string) => l.toUpperCase()) as keyof typeof Code;
    for (const c of ERROR_CODES) expect(grpcStatusOf(c)).toBe(Code[connectName(c)]);
    expect(Object.keys(GRPC_STATUS).sort()).toEqual([...ERROR_CODES].sort());
  });
});
