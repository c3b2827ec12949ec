import { StowageError } from "@stowage/core";
import { describe, expect, it } from "vitest";
import { type DiskSpec, diskXml } from "./disk.js";
import { iothreadPinXml, validationDomain } from "./domain.js";
import { blockThin, fileQcow2, iscsiChap, nfsQcow2, rbdAuth } from "./test-fixtures.js";
import { checkHost, checkIqn } from "./validate.js";

/** The invalid_argument error `fn` throws (and fails the test if it throws something else, or nothing). */
function refusal(fn: () => unknown): StowageError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StowageError);
    expect((err as StowageError).code).toBe("invalid_argument");
    return err as StowageError;
  }
  throw new Error("expected an invalid_argument error, got none");
}

const bad = (spec: unknown) => refusal(() => diskXml(spec as DiskSpec));

describe("paths", () => {
  it.each([
    [
      "a relative file path",
      { ...fileQcow2, path: "pools/vol.qcow2" },
      /file\.path "pools\/vol\.qcow2" must be an absolute path/,
    ],
    ["an empty file path", { ...fileQcow2, path: "" }, /file\.path "" must be an absolute path/],
    ["the root alone", { ...fileQcow2, path: "/" }, /must be an absolute path/],
    ["a relative device", { ...blockThin, path: "sdb" }, /block\.path "sdb" must be an absolute path/],
    [
      "a relative export",
      { ...nfsQcow2, exportPath: "export" },
      /nfs\.exportPath "export" must be an absolute path/,
    ],
    [
      "an absolute file in an export",
      { ...nfsQcow2, file: "/etc/passwd" },
      /nfs\.file .* non-empty relative path/,
    ],
    [
      "a file climbing out of its export",
      { ...nfsQcow2, file: "../other/v.qcow2" },
      /nfs\.file .* "\.\." components/,
    ],
    ["a newline in a path", { ...fileQcow2, path: "/a\nb" }, /file\.path .* control character/],
    ["a NUL in a path", { ...fileQcow2, path: "/a\u0000b" }, /control character/],
    ["a lone surrogate", { ...fileQcow2, path: "/a\ud800b" }, /character XML cannot carry/],
  ])("refuses %s", (_, spec, message) => {
    expect(bad(spec).message).toMatch(message);
  });
});

describe("ports and hosts", () => {
  it.each([0, -1, 65536, 3260.5, Number.NaN])("refuses portal port %s", (port) => {
    expect(bad({ ...iscsiChap, portal: { host: "203.0.113.11", port } }).message).toMatch(
      /iscsi\.portal\.port .* out of range: a port is an integer in 1-65535/,
    );
  });

  it("refuses a monitor port out of range, naming which monitor", () => {
    const monitors = [
      { host: "203.0.113.31", port: 6789 },
      { host: "203.0.113.32", port: 70000 },
    ];
    expect(bad({ ...rbdAuth, monitors }).message).toMatch(/rbd\.monitors\[1\]\.port 70000 is out of range/);
  });

  it("refuses an NFS port out of range but takes none", () => {
    expect(bad({ ...nfsQcow2, port: 0 }).message).toMatch(/nfs\.port 0 is out of range/);
    expect(() => diskXml({ ...nfsQcow2, port: undefined })).not.toThrow();
  });

  it.each([
    "",
    "host name",
    "a..b",
    "-a.example",
    "a_b.example",
    "[2001:db8::1]",
    "203.0.113.1:3260",
    "fe80::1%eth0",
  ])("refuses host %j", (host) => {
    expect(refusal(() => checkHost("host", host)).message).toMatch(/is not a host name or an IP address/);
  });

  it.each([
    "203.0.113.11",
    "2001:db8::1",
    "ceph-mon1.test",
    "localhost",
    "nfs.example.",
    "::ffff:203.0.113.1",
  ])("takes host %j", (host) => {
    expect(checkHost("host", host)).toBe(host);
  });
});

describe("iSCSI names (RFC 3720)", () => {
  it.each([
    "iqn.2026-12.dev.stowage",
    "iqn.2026-12.dev.stowage:exp-0190f1a2",
    "iqn.1993-08.org.debian:01:abcdef0123",
    "iqn.2008-11.org.linux-kvm",
  ])("takes %s", (iqn) => {
    expect(checkIqn("iqn", iqn)).toBe(iqn);
  });

  it.each([
    ["no iqn. prefix", "2026-12.dev.stowage:x"],
    ["an EUI name", "eui.02004567A425678D"],
    ["no month", "iqn.2026.dev.stowage:x"],
    ["month 13", "iqn.2026-13.dev.stowage:x"],
    ["a two-digit year", "iqn.26-12.dev.stowage:x"],
    ["no naming authority", "iqn.2026-12:x"],
    ["uppercase", "iqn.2026-12.dev.Stowage:x"],
    ["a space", "iqn.2026-12.dev.stowage:a b"],
    ["a slash (it would split IQN/LUN)", "iqn.2026-12.dev.stowage:a/1"],
    ["more than 223 characters", `iqn.2026-12.dev.stowage:${"a".repeat(200)}`],
  ])("refuses %s", (_, iqn) => {
    expect(refusal(() => checkIqn("iqn", iqn)).message).toMatch(
      /is not an iSCSI qualified name: use iqn\.YYYY-MM/,
    );
  });

  it("refuses a bad target IQN and a bad initiator IQN, naming the field", () => {
    expect(bad({ ...iscsiChap, iqn: "iqn.2026-12" }).message).toMatch(/^iscsi\.iqn /);
    expect(bad({ ...iscsiChap, initiatorIqn: "h2" }).message).toMatch(/^iscsi\.initiatorIqn "h2"/);
  });

  it.each([-1, 16384, 1.5])("refuses LUN %s", (lun) => {
    expect(bad({ ...iscsiChap, lun }).message).toMatch(
      /iscsi\.lun .* out of range: a LUN is an integer in 0-16383/,
    );
  });
});

describe("RBD names and auth", () => {
  it("refuses an empty image name and an empty pool", () => {
    expect(bad({ ...rbdAuth, image: "" }).message).toBe("rbd.image is empty");
    expect(bad({ ...rbdAuth, pool: "" }).message).toBe("rbd.pool is empty");
  });

  it.each(["a/b", "img@snap", "img name", "-x"])("refuses image name %j", (image) => {
    expect(bad({ ...rbdAuth, image }).message).toMatch(/rbd\.image .* is not valid/);
  });

  it("refuses no monitors", () => {
    expect(bad({ ...rbdAuth, monitors: [] }).message).toMatch(/at least one Ceph monitor/);
  });

  it("refuses a cephx user with its client. prefix, with a hint", () => {
    expect(bad({ ...rbdAuth, auth: { username: "client.h2", secretUsage: "x" } }).message).toMatch(
      /rbd\.auth\.username "client\.h2" .* without its 'client\.' prefix/,
    );
  });

  it("refuses an empty secret usage or one with a slash", () => {
    expect(bad({ ...iscsiChap, chap: { username: "h2", secretUsage: "" } }).message).toMatch(
      /iscsi\.chap\.secretUsage/,
    );
    expect(bad({ ...rbdAuth, auth: { username: "h2", secretUsage: "a/b" } }).message).toMatch(/without '\/'/);
  });
});

describe("targets and driver settings", () => {
  it.each(["vda1", "hda", "xvda", "vd", "sd", "VDB", "vdb ", "nvme0n1"])("refuses target dev %j", (dev) => {
    expect(bad({ ...fileQcow2, target: { dev } }).message).toMatch(
      /target\.dev .* use vd\[a-z\]\+ or sd\[a-z\]\+/,
    );
  });

  it("refuses a target whose name does not fit its bus", () => {
    expect(bad({ ...fileQcow2, target: { dev: "vdb", bus: "scsi" } }).message).toMatch(
      /vdb does not fit bus scsi/,
    );
    expect(bad({ ...fileQcow2, target: { dev: "sdb", bus: "virtio" } }).message).toMatch(
      /sdb does not fit bus virtio/,
    );
    expect(bad({ ...fileQcow2, target: { dev: "sdb", bus: "ide" } }).message).toMatch(
      /target\.bus "ide" is not one of/,
    );
  });

  it("refuses a missing target", () => {
    expect(bad({ ...fileQcow2, target: undefined }).message).toMatch(/target is required/);
  });

  it("refuses io native without O_DIRECT, and unknown modes", () => {
    expect(bad({ ...blockThin, cache: "writeback" }).message).toMatch(
      /io='native' needs cache='none' or 'directsync'/,
    );
    expect(() => diskXml({ ...blockThin, cache: "writeback", io: "threads" })).not.toThrow();
    expect(bad({ ...blockThin, cache: "fast" }).message).toMatch(/cache "fast" is not one of/);
    expect(bad({ ...blockThin, io: "aio" }).message).toMatch(/io "aio" is not one of/);
    expect(bad({ ...blockThin, discard: "trim" }).message).toMatch(/discard "trim" is not one of/);
  });

  it("refuses a format the kind does not have, and a shareable qcow2", () => {
    expect(bad({ ...blockThin, format: "qcow2" }).message).toMatch(/block\.format "qcow2" is not one of raw/);
    expect(bad({ ...fileQcow2, format: "vmdk" }).message).toMatch(/file\.format "vmdk"/);
    expect(bad({ ...fileQcow2, shareable: true }).message).toMatch(/shareable writable disk must be raw/);
    expect(() => diskXml({ ...fileQcow2, shareable: true, readonly: true })).not.toThrow();
  });

  it("refuses an iothread 0 or on a non-virtio disk", () => {
    expect(bad({ ...fileQcow2, iothread: 0 }).message).toMatch(/iothread 0 is not valid/);
    expect(bad({ ...fileQcow2, target: { dev: "sdb" }, iothread: 1 }).message).toMatch(
      /iothread needs a virtio disk/,
    );
  });

  it("refuses a serial libvirt would not take, and an unknown kind", () => {
    expect(bad({ ...fileQcow2, serial: "vol/1" }).message).toMatch(/serial "vol\/1" is not valid/);
    expect(bad({ ...fileQcow2, kind: "gluster" }).message).toMatch(
      /disk kind "gluster" is not one of file, block/,
    );
  });

  it("refuses a name with a control character (an attribute would not re-parse to it)", () => {
    expect(bad({ ...fileQcow2, alias: "a\tb" }).message).toMatch(/alias .* control character/);
  });
});

describe("iothread pins and the validation domain", () => {
  it.each(["", "a", "1-", "3-1", "0-3,x", "^2"])("refuses cpuset %j", (cpuset) => {
    expect(refusal(() => iothreadPinXml(1, cpuset)).message).toMatch(/cpuset|CPU list/);
  });

  it("refuses iothread 0 in a pin", () => {
    expect(refusal(() => iothreadPinXml(0, "0-3")).message).toMatch(/iothread 0 is not valid/);
  });

  it("refuses a disk on an iothread the domain does not define, and a cpuset with no iothreads", () => {
    expect(
      refusal(() => validationDomain([{ ...fileQcow2, iothread: 3 }], { iothreads: 2 })).message,
    ).toMatch(/a disk uses iothread 3 but the domain defines 2/);
    expect(refusal(() => validationDomain([fileQcow2], { cpuset: "0-3" })).message).toMatch(
      /domain has none/,
    );
  });

  it("refuses two disks on one target and two with one name", () => {
    expect(
      refusal(() => validationDomain([fileQcow2, { ...blockThin, target: { dev: "vdb" } }])).message,
    ).toMatch(/two disks on target vdb/);
    expect(refusal(() => validationDomain([fileQcow2, { ...blockThin, alias: "web-data" }])).message).toMatch(
      /two disks named "web-data"/,
    );
  });
});
