import { describe, expect, it } from "vitest";
import { minimalGrpcMessage } from "./grpc-message.js";

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
