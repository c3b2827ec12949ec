import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { PoolKind, PoolSchema, VolumeState, VolumeStateSchema } from "@stowage/proto";
import { describe, expect, it } from "vitest";
import { enumName, formatDuration, relativeTime, renderDetails, renderTable, toPlain } from "./output.js";

describe("renderTable", () => {
  it("aligns columns and trims trailing space", () => {
    expect(
      renderTable(
        ["NAME", "SIZE", "NOTE"],
        [
          ["a", "10 GiB", ""],
          ["longer-name", "1 B", "x"],
        ],
      ),
    ).toBe("NAME          SIZE     NOTE\na             10 GiB\nlonger-name   1 B      x\n");
  });
});

describe("renderDetails", () => {
  it("aligns values and leaves out undefined rows", () => {
    expect(
      renderDetails([
        ["Name", "x"],
        ["Error", undefined],
        ["NUMA node", "0"],
      ]),
    ).toBe("Name:       x\nNUMA node:  0\n");
  });
});

describe("toPlain", () => {
  it("uses lowercase enum names, bigint strings, ISO timestamps and omits unset optionals", () => {
    const pool = create(PoolSchema, {
      id: "n/p",
      kind: PoolKind.LVMTHIN,
      capacity: { totalBytes: 2n ** 60n },
      updatedAt: timestampFromDate(new Date("2025-01-01T00:00:00Z")),
    });
    const plain = toPlain(PoolSchema, pool) as Record<string, unknown>;
    expect(plain).toMatchObject({
      id: "n/p",
      kind: "lvmthin",
      capacity: { totalBytes: "1152921504606846976", usedBytes: "0" },
      updatedAt: "2025-01-01T00:00:00.000Z",
      formats: [],
      labels: {},
    });
    expect("numaNode" in plain).toBe(false);
    expect(enumName(VolumeStateSchema, VolumeState.AVAILABLE)).toBe("available");
    expect(enumName(VolumeStateSchema, 99)).toBe("99");
  });
});

describe("times", () => {
  const now = new Date("2025-01-01T12:00:00Z");
  it.each([
    [0, "just now"],
    [5, "5s ago"],
    [119, "119s ago"],
    [600, "10m ago"],
    [3 * 3600, "3h ago"],
    [3 * 86400, "3d ago"],
    [-300, "in 5m"],
  ])("%i seconds ago reads %s", (seconds, text) => {
    expect(relativeTime(new Date(now.getTime() - seconds * 1000), now)).toBe(text);
  });

  it("formats durations", () => {
    expect(formatDuration(850)).toBe("850ms");
    expect(formatDuration(1234)).toBe("1.2s");
    expect(formatDuration(300_000)).toBe("5m");
    expect(formatDuration(125_000)).toBe("2m5s");
  });
});
