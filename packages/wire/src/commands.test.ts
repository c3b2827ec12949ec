import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { AgentCommandSchema, CompressionType, OperationKind, VolumeFormat, WipeMode } from "@stowage/proto";
import { describe, expect, it } from "vitest";
import { artifactFromWire, artifactToWire } from "./artifacts.js";
import { operationFromCommand } from "./commands.js";

const VOL = `vol-${"a".repeat(32)}`;
const SRC = `vol-${"b".repeat(32)}`;
const SNAP = `snap-${"c".repeat(32)}`;
const OP = `op-${"d".repeat(32)}`;

const command = (payload: MessageInitShape<typeof AgentCommandSchema>["payload"]) =>
  create(AgentCommandSchema, {
    operationId: OP,
    kind: OperationKind.CREATE_VOLUME,
    poolName: "local",
    payload,
  });

describe("agent command payloads as driver specs", () => {
  it("a create names its format and qcow2 options as domain values", () => {
    const op = operationFromCommand(
      command({
        case: "createVolume",
        value: {
          volumeId: VOL,
          sizeBytes: 1024n,
          format: VolumeFormat.QCOW2,
          qcow2: { clusterSizeBytes: 65536n, compressionType: CompressionType.ZLIB },
        },
      }),
    );
    expect(op).toEqual({
      operationId: OP,
      poolName: "local",
      kind: "create_volume",
      spec: {
        volumeId: VOL,
        operationId: OP,
        sizeBytes: 1024n,
        format: "qcow2",
        qcow2: { clusterSize: 65536, compressionType: "zlib" },
      },
    });
  });

  it.each([VolumeFormat.UNSPECIFIED, 7 as VolumeFormat])(
    "a create with format %i is refused, never qcow2",
    (format) => {
      const cmd = command({ case: "createVolume", value: { volumeId: VOL, sizeBytes: 1024n, format } });
      expect(() => operationFromCommand(cmd)).toThrow(
        expect.objectContaining({ code: "invalid_argument", details: { field: "create_volume.format" } }),
      );
    },
  );

  it("a clone keeps only the optional fields that are set", () => {
    const plain = operationFromCommand(
      command({
        case: "cloneVolume",
        value: { volumeId: VOL, sourceVolumeId: SRC, format: VolumeFormat.RAW },
      }),
    );
    expect(plain.spec).toEqual({
      volumeId: VOL,
      operationId: OP,
      sourceVolumeId: SRC,
      format: "raw",
      flatten: false,
    });
    const full = operationFromCommand(
      command({
        case: "cloneVolume",
        value: {
          volumeId: VOL,
          sourceVolumeId: SRC,
          sourceSnapshotId: SNAP,
          sizeBytes: 2048n,
          format: VolumeFormat.QCOW2,
          flatten: true,
        },
      }),
    );
    expect(full.spec).toMatchObject({
      sourceSnapshotId: SNAP,
      sizeBytes: 2048n,
      flatten: true,
      format: "qcow2",
    });
    expect(() =>
      operationFromCommand(command({ case: "cloneVolume", value: { volumeId: VOL, sourceVolumeId: SRC } })),
    ).toThrow(/volume format is required/);
  });

  it("a delete without a wipe mode wipes nothing; one with a mode keeps it", () => {
    const none = operationFromCommand(command({ case: "deleteVolume", value: { volumeId: VOL } }));
    expect(none).toMatchObject({
      kind: "delete_volume",
      spec: { volumeId: VOL, operationId: OP, wipe: "none" },
    });
    const zero = operationFromCommand(
      command({ case: "deleteVolume", value: { volumeId: VOL, wipe: WipeMode.DISCARD } }),
    );
    expect(zero.spec).toMatchObject({ wipe: "discard" });
  });

  it("resize and the three snapshot commands", () => {
    expect(
      operationFromCommand(
        command({ case: "resizeVolume", value: { volumeId: VOL, newSizeBytes: 4096n, allowShrink: true } }),
      ),
    ).toMatchObject({
      kind: "resize_volume",
      spec: { newSizeBytes: 4096n, allowShrink: true, operationId: OP },
    });
    for (const [c, kind] of [
      ["createSnapshot", "create_snapshot"],
      ["deleteSnapshot", "delete_snapshot"],
      ["revertSnapshot", "revert_snapshot"],
    ] as const) {
      const op = operationFromCommand(command({ case: c, value: { volumeId: VOL, snapshotId: SNAP } }));
      expect(op).toMatchObject({ kind, spec: { volumeId: VOL, snapshotId: SNAP, operationId: OP } });
    }
  });

  it("an empty command is unimplemented", () => {
    expect(() => operationFromCommand(command({ case: undefined }))).toThrow(
      expect.objectContaining({ code: "unimplemented" }),
    );
  });
});

describe("artefacts", () => {
  it("round-trip, and a format the build does not know is refused", () => {
    const a = {
      volumeId: VOL,
      poolName: "local",
      sizeBytes: 1024n,
      format: "qcow2" as const,
      allocatedBytes: 512n,
      path: `/pools/local/${VOL}.qcow2`,
      operationId: OP,
    };
    const w = artifactToWire(a);
    expect(w.format).toBe(VolumeFormat.QCOW2);
    expect(artifactFromWire(w)).toEqual(a);
    expect(() => artifactFromWire({ ...w, format: VolumeFormat.UNSPECIFIED })).toThrow(
      /volume format is required/,
    );
  });
});
