import { describe, expect, it } from "vitest";
import {
  CAPABILITIES,
  capabilitiesOf,
  cephxUserFor,
  checkCapabilityTable,
  requireCapability,
  requireExport,
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

  it("exports dir and LVM volumes over iSCSI, RBD images by grant, and netfs volumes not at all", () => {
    expect(() => requireExport("dir", "qcow2", "iscsi")).not.toThrow();
    expect(() => requireExport("lvmthin", "raw", "iscsi")).not.toThrow();
    expect(() => requireExport("rbd", "raw", "rbd")).not.toThrow();
    expect(() => requireExport("rbd", "raw", "iscsi")).toThrow(
      expect.objectContaining({ code: "failed_precondition", message: expect.stringContaining("use rbd") }),
    );
    expect(() => requireExport("dir", "raw", "nfs")).toThrow(/over nfs: use iscsi/);
    expect(() => requireExport("netfs", "qcow2", "iscsi")).toThrow(/reaches them already/);
  });

  it("names one cephx client per export and host, from ids and names only", () => {
    const user = cephxUserFor("exp-0123456789abcdef0123456789abcdef", "h2.rack_1");
    expect(user).toBe("stowage-0123456789abcdef0123456789abcdef-h2_drack__1");
    // A libvirt <auth username> (genericName) as well as a Ceph entity id.
    expect(user).toMatch(/^[A-Za-z0-9_+-]+$/);
    expect(cephxUserFor("exp-0123456789abcdef0123456789abcdef", "h2_d")).not.toBe(
      cephxUserFor("exp-0123456789abcdef0123456789abcdef", "h2."),
    );
    expect(cephxUserFor("exp-0123456789abcdef0123456789abcdef", "h3")).not.toBe(user);
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
