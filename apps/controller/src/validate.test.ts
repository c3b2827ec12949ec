import { create } from "@bufbuild/protobuf";
import {
  CreateVolumeRequestSchema,
  GetOperationRequestSchema,
  ListVolumesRequestSchema,
  WatchOperationsRequestSchema,
} from "@stowage/proto";
import { describe, expect, it } from "vitest";
import { createNulStringInterceptor, findNulString } from "./validate.js";

describe("findNulString", () => {
  it("finds a NUL character in any string of a request, nested, listed and in map keys and values (issue 10's fuzzing: GetOperation and ListVolumes answered INTERNAL)", () => {
    expect(
      findNulString(
        GetOperationRequestSchema,
        create(GetOperationRequestSchema, { operationId: "x\u0000y" }),
      ),
    ).toBe("operation_id");
    expect(
      findNulString(ListVolumesRequestSchema, create(ListVolumesRequestSchema, { namePrefix: "\u0000" })),
    ).toBe("name_prefix");
    const nested = create(CreateVolumeRequestSchema, {
      name: "ok",
      constraints: { poolLabels: { "a\u0000": "b" } },
    });
    expect(findNulString(CreateVolumeRequestSchema, nested)).toBe("constraints.pool_labels");
    const listed = create(CreateVolumeRequestSchema, { constraints: { numa: { hostId: "h\u0000" } } });
    expect(findNulString(CreateVolumeRequestSchema, listed)).toBe("constraints.numa.host_id");
    expect(
      findNulString(
        CreateVolumeRequestSchema,
        create(CreateVolumeRequestSchema, { name: "ok", labels: { a: "b" } }),
      ),
    ).toBeUndefined();
  });
});

describe("createNulStringInterceptor", () => {
  it("refuses a NUL character in a server-streaming call's request too, as the handler reads it (WatchOperations answered INTERNAL)", async () => {
    const next = async (req: { message: AsyncIterable<unknown> }) => {
      for await (const _ of req.message);
      return {};
    };
    const req = {
      stream: true,
      method: { input: WatchOperationsRequestSchema },
      message: (async function* () {
        yield create(WatchOperationsRequestSchema, { volumeId: "x\u0000" });
      })(),
    };
    await expect(createNulStringInterceptor()(next as never)(req as never)).rejects.toThrow(
      /volume_id contains a NUL/,
    );
  });
});
