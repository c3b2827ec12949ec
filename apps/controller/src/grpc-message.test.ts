import { describe, expect, it } from "vitest";
import { minimalGrpcMessage, statusOfUndecodable } from "./grpc-message.js";

describe("minimalGrpcMessage", () => {
  it("leaves printable ASCII readable by decodeURI-based clients", () => {
    const encoded = encodeURIComponent(`volume name "../x" is not valid: use a-z, 0-9`);
    const minimal = minimalGrpcMessage(encoded);
    expect(minimal).toBe(`volume name "../x" is not valid: use a-z, 0-9`);
    expect(decodeURI(minimal)).toBe(`volume name "../x" is not valid: use a-z, 0-9`);
  });
  it("still escapes '%' and non-ASCII so strict decoders round-trip", () => {
    const minimal = minimalGrpcMessage(encodeURIComponent("100% full — café"));
    expect(minimal).toBe("100%25 full %E2%80%94 caf%C3%A9");
    expect(decodeURIComponent(minimal)).toBe("100% full — café");
  });
});

describe("statusOfUndecodable", () => {
  it("makes a request body that is not protobuf INVALID_ARGUMENT, and leaves real INTERNAL errors alone (issue 10's fuzzing)", () => {
    expect(statusOfUndecodable("13", encodeURIComponent("parse binary: premature EOF"))).toBe("3");
    expect(statusOfUndecodable("13", "parse binary: illegal tag: field no 4 wire type 6")).toBe("3");
    expect(statusOfUndecodable("13", "internal error (error id err-1)")).toBe("13");
    expect(statusOfUndecodable("5", "parse binary: x")).toBe("5");
  });
});
