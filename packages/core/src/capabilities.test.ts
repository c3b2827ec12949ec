import { describe, expect, it } from "vitest";
import {
  CAPABILITIES,
  capabilitiesOf,
  checkCapabilityTable,
  requireCapability,
  requireWipe,
} from "./capabilities.js";
import { FORMATS_BY_KIND, POOL_KINDS } from "./domain.js";

describe("capability table", () => {
  it("has a row for every format each kind can hold, and none for formats it cannot", () => {
    checkCapabilityTable();
    for (const kind of POOL_KINDS) {
      expect(Object.keys(CAPABILITIES[kind]).sort()).toEqual([...FORMATS_BY_KIND[kind]].sort());
    }
  });

  it("refuses snapshots of raw dir volumes and allows them on qcow2", () => {
    expect(() => requireCapability("dir", "raw", "snapshots")).toThrow(
      expect.objectContaining({
        code: "failed_precondition",
        message: expect.stringContaining("raw volumes on dir"),
      }),
    );
    expect(() => requireCapability("dir", "qcow2", "snapshots")).not.toThrow();
  });

  it("refuses zero wipes on rbd and names the modes that work", () => {
    expect(() => requireWipe("rbd", "raw", "zero")).toThrow(/use none or discard/);
    expect(() => requireWipe("lvm", "raw", "zero")).not.toThrow();
  });

  it("gives nothing to a pair that cannot exist", () => {
    expect(capabilitiesOf("lvm", "qcow2")).toMatchObject({ snapshots: false, clones: false, wipe: ["none"] });
  });

  it("reads a table it is given, so one row decides", () => {
    const table = {
      ...CAPABILITIES,
      dir: { ...CAPABILITIES.dir, raw: { ...CAPABILITIES.dir.raw!, snapshots: true } },
    };
    expect(() => requireCapability("dir", "raw", "snapshots", table)).not.toThrow();
    expect(() => checkCapabilityTable({ ...CAPABILITIES, lvm: { qcow2: CAPABILITIES.dir.qcow2! } })).toThrow(
      /lvm pools cannot hold qcow2/,
    );
  });
});
