import { describe, expect, it } from "vitest";
import { create, fragment } from "xmlbuilder2";
import { type DiskSpec, diskElement, diskXml, driverDefaults, userAlias } from "./disk.js";
import { iothreadPinXml, STOWAGE_XMLNS, validationDomain } from "./domain.js";
import { blockThin, fileQcow2, iscsiChap, nfsQcow2, rbdAuth, VOL } from "./test-fixtures.js";

/** The few DOM members the tests read (the package has no DOM lib; xmlbuilder2's parser provides them). */
interface Element {
  tagName: string;
  textContent: string | null;
  children: ArrayLike<Element>;
  attributes: ArrayLike<{ name: string; value: string }>;
  getAttribute(name: string): string | null;
  hasAttribute(name: string): boolean;
  getElementsByTagName(name: string): ArrayLike<Element>;
  getElementsByTagNameNS(ns: string, name: string): ArrayLike<Element>;
}

/** Parses `xml` and returns its root element (xmlbuilder2's parser, which resolves the escapes). */
function parse(xml: string): Element {
  return create(xml).root().node as unknown as Element;
}

/** The element at a path of tag names below `root`, like "source/host". */
function one(root: Element, path: string): Element {
  let el: Element | undefined = root;
  for (const name of path.split("/")) {
    el = Array.from(el?.children ?? []).find((c) => c.tagName === name);
    if (!el) throw new Error(`no ${path} in ${root.tagName}`);
  }
  return el;
}

function all(root: Element, tag: string): Element[] {
  return Array.from(root.getElementsByTagName(tag));
}

function attrsOf(el: Element): Record<string, string> {
  return Object.fromEntries(Array.from(el.attributes).map((a) => [a.name, a.value]));
}

describe("diskXml: one element per kind", () => {
  it("a file qcow2 volume is type='file' with <source file>, cache none, io threads and discard unmap", () => {
    const disk = parse(diskXml(fileQcow2));
    expect(attrsOf(disk)).toEqual({ type: "file", device: "disk" });
    expect(attrsOf(one(disk, "driver"))).toEqual({
      name: "qemu",
      type: "qcow2",
      cache: "none",
      io: "threads",
      discard: "unmap",
    });
    expect(attrsOf(one(disk, "source"))).toEqual({ file: "/var/lib/stowage/pools/dir1/vol-1.qcow2" });
    expect(attrsOf(one(disk, "target"))).toEqual({ dev: "vdb", bus: "virtio" });
    expect(one(disk, "serial").textContent).toBe(VOL);
    expect(attrsOf(one(disk, "alias"))).toEqual({ name: "ua-web-data" });
  });

  it("a thin block volume is type='block' with <source dev>, cache none, io native and discard unmap", () => {
    const disk = parse(diskXml(blockThin));
    expect(attrsOf(disk)).toEqual({ type: "block", device: "disk" });
    expect(attrsOf(one(disk, "driver"))).toEqual({
      name: "qemu",
      type: "raw",
      cache: "none",
      io: "native",
      discard: "unmap",
    });
    expect(attrsOf(one(disk, "source"))).toEqual({ dev: "/dev/stowage-vg/vol-2" });
  });

  it("a thick block volume has no discard", () => {
    const disk = parse(diskXml({ ...blockThin, thin: false }));
    expect(one(disk, "driver").hasAttribute("discard")).toBe(false);
    expect(one(disk, "driver").getAttribute("io")).toBe("native");
  });

  it("an iSCSI volume is type='network' protocol iscsi with IQN/LUN, the portal, the initiator and CHAP auth", () => {
    const disk = parse(diskXml(iscsiChap));
    expect(attrsOf(disk)).toEqual({ type: "network", device: "disk" });
    expect(attrsOf(one(disk, "driver"))).toEqual({ name: "qemu", type: "raw", cache: "none", io: "native" });
    expect(attrsOf(one(disk, "source"))).toEqual({
      protocol: "iscsi",
      name: "iqn.2026-12.dev.stowage:exp-0190f1a2/1",
    });
    expect(attrsOf(one(disk, "source/host"))).toEqual({ name: "203.0.113.11", port: "3260" });
    expect(attrsOf(one(disk, "source/initiator/iqn"))).toEqual({ name: "iqn.2026-12.dev.stowage:h2" });
    expect(attrsOf(one(disk, "source/auth"))).toEqual({ username: "stowage-h2" });
    expect(attrsOf(one(disk, "source/auth/secret"))).toEqual({
      type: "iscsi",
      usage: "stowage-chap-exp-0190f1a2",
    });
  });

  it("an iSCSI LUN that holds a qcow2 image (an exported qcow2 dir volume) says so in its driver", () => {
    expect(attrsOf(one(parse(diskXml({ ...iscsiChap, format: "qcow2" })), "driver"))).toMatchObject({
      type: "qcow2",
    });
    expect(() => diskXml({ ...iscsiChap, format: "vmdk" as never })).toThrow(/iscsi.format/);
  });

  it("an iSCSI volume without CHAP has no <auth>", () => {
    const { chap: _, ...noChap } = iscsiChap;
    expect(all(parse(diskXml(noChap)), "auth")).toHaveLength(0);
  });

  it("an RBD volume is protocol rbd with pool/image, every monitor and a ceph secret by usage", () => {
    const disk = parse(diskXml(rbdAuth));
    expect(attrsOf(one(disk, "source"))).toEqual({ protocol: "rbd", name: "stowage/vol-0190f1a2" });
    expect(all(disk, "host").map(attrsOf)).toEqual([
      { name: "203.0.113.31", port: "6789" },
      { name: "ceph-mon2.test", port: "3300" },
    ]);
    expect(attrsOf(one(disk, "source/auth/secret"))).toEqual({
      type: "ceph",
      usage: "client.stowage-h2 secret",
    });
    expect(one(disk, "driver").getAttribute("discard")).toBe("unmap");
  });

  it("an NFS volume names the file inside the export, its server, and the <identity> libvirt 9.0 requires", () => {
    const disk = parse(diskXml({ ...nfsQcow2, identity: { user: "stowage", group: "+107" } }));
    expect(attrsOf(one(disk, "source"))).toEqual({
      protocol: "nfs",
      name: "/export/stowage/netfs1/vol-3.qcow2",
    });
    expect(attrsOf(one(disk, "source/host"))).toEqual({ name: "203.0.113.21", port: "2049" });
    expect(attrsOf(one(disk, "source/identity"))).toEqual({ user: "stowage", group: "+107" });
    expect(attrsOf(one(disk, "driver"))).toMatchObject({ type: "qcow2", cache: "none", io: "threads" });
  });

  it("an NFS volume without a port lets the portmapper answer, and an export with a trailing slash joins once", () => {
    const disk = parse(diskXml({ ...nfsQcow2, port: undefined, exportPath: "/export/stowage/" }));
    expect(attrsOf(one(disk, "source/host"))).toEqual({ name: "203.0.113.21" });
    expect(one(disk, "source").getAttribute("name")).toBe("/export/stowage/netfs1/vol-3.qcow2");
    expect(attrsOf(one(disk, "source/identity"))).toEqual({});
  });
});

describe("diskXml: common settings", () => {
  it("readonly, shareable and iothread come out as libvirt spells them", () => {
    const disk = parse(diskXml({ ...blockThin, readonly: true, shareable: true, iothread: 2 }));
    expect(all(disk, "readonly")).toHaveLength(1);
    expect(all(disk, "shareable")).toHaveLength(1);
    expect(one(disk, "driver").getAttribute("iothread")).toBe("2");
  });

  it("cache, io and discard overrides win over the kind's defaults", () => {
    const disk = parse(diskXml({ ...fileQcow2, cache: "directsync", io: "native", discard: "ignore" }));
    expect(attrsOf(one(disk, "driver"))).toMatchObject({
      cache: "directsync",
      io: "native",
      discard: "ignore",
    });
  });

  it("an sd* target defaults to the scsi bus", () => {
    const disk = parse(diskXml({ ...fileQcow2, target: { dev: "sdb" } }));
    expect(attrsOf(one(disk, "target"))).toEqual({ dev: "sdb", bus: "scsi" });
  });

  it("the defaults table: cache none everywhere, io native on raw devices and network, threads on files", () => {
    const kinds = [
      fileQcow2,
      { ...fileQcow2, format: "raw" },
      blockThin,
      iscsiChap,
      rbdAuth,
      nfsQcow2,
    ] as DiskSpec[];
    expect(kinds.map((s) => [s.kind, driverDefaults(s)])).toEqual([
      ["file", { cache: "none", io: "threads", discard: "unmap" }],
      ["file", { cache: "none", io: "threads", discard: "unmap" }],
      ["block", { cache: "none", io: "native", discard: "unmap" }],
      ["iscsi", { cache: "none", io: "native" }],
      ["rbd", { cache: "none", io: "native", discard: "unmap" }],
      ["nfs", { cache: "none", io: "threads", discard: "unmap" }],
    ]);
  });

  it("diskElement appends to a parent, and a refused spec leaves the parent as it was", () => {
    const devices = fragment().ele("devices");
    diskElement(devices, fileQcow2);
    expect(() => diskElement(devices, { ...blockThin, path: "dev/sdz" })).toThrow(/absolute path/);
    const parsed = parse(devices.end({ headless: true }));
    expect(all(parsed, "disk")).toHaveLength(1);
  });
});

describe("escaping: user text is never markup", () => {
  const nasty = `<x y='1'> & "q" </x>`;

  it("a name with <>&'\" is no alias (libvirt refuses it) but goes, escaped, into the metadata and re-parses", () => {
    expect(userAlias(nasty)).toBeUndefined();
    const disk = parse(diskXml({ ...fileQcow2, alias: nasty }));
    expect(all(disk, "alias")).toHaveLength(0);

    const xml = validationDomain([{ ...fileQcow2, alias: nasty, labels: { team: `a&b<c>'"` } }]);
    expect(xml).not.toContain(nasty);
    expect(xml).toContain("&lt;x y='1'&gt; &amp; &quot;q&quot; &lt;/x&gt;");
    const volume = Array.from(parse(xml).getElementsByTagNameNS(STOWAGE_XMLNS, "volume"))[0];
    expect(volume?.getAttribute("name")).toBe(nasty);
    expect(volume?.getAttribute("serial")).toBe(VOL);
    const label = Array.from(parse(xml).getElementsByTagNameNS(STOWAGE_XMLNS, "label"))[0];
    expect(label && attrsOf(label)).toEqual({ key: "team", value: `a&b<c>'"` });
  });

  it("a path with a quote and metacharacters comes out escaped and re-parses to the same path", () => {
    const path = `/srv/it's "my" <pool> & co/vol.qcow2`;
    const xml = diskXml({ ...fileQcow2, path });
    expect(xml).toContain(`file="/srv/it's &quot;my&quot; &lt;pool&gt; &amp; co/vol.qcow2"`);
    expect(one(parse(xml), "source").getAttribute("file")).toBe(path);
    const nfs = diskXml({ ...nfsQcow2, exportPath: "/ex'port", file: "a&b/it's.qcow2" });
    expect(one(parse(nfs), "source").getAttribute("name")).toBe("/ex'port/a&b/it's.qcow2");
  });

  it("a secret usage with metacharacters is escaped", () => {
    const usage = `ceph <client> & 'h2'`;
    const xml = diskXml({ ...rbdAuth, auth: { username: "h2", secretUsage: usage } });
    expect(one(parse(xml), "source/auth/secret").getAttribute("usage")).toBe(usage);
  });
});

describe("secrets: only the usage name reaches the XML", () => {
  const value = "AQBkZmFzZGZhc2RmYXNkZgo-s3cr3t==";

  it("a CHAP or cephx secret value left on the spec by a caller never appears", () => {
    const chap = { username: "stowage-h2", secretUsage: "stowage-chap-1", secret: value, password: value };
    const auth = { username: "stowage-h2", secretUsage: "ceph-h2", key: value, secret: value };
    const xml = validationDomain([{ ...iscsiChap, chap } as DiskSpec, { ...rbdAuth, auth } as DiskSpec]);
    expect(xml).not.toContain(value);
    expect(xml).not.toContain("s3cr3t");
    const secrets = all(parse(xml), "secret").map(attrsOf);
    expect(secrets).toEqual([
      { type: "iscsi", usage: "stowage-chap-1" },
      { type: "ceph", usage: "ceph-h2" },
    ]);
  });
});

describe("iothreadPinXml and validationDomain", () => {
  it("pins an iothread to a normalised CPU set", () => {
    expect(iothreadPinXml(1, "0-3")).toBe('<iothreadpin iothread="1" cpuset="0-3"/>');
    expect(iothreadPinXml(2, "3, 0-2,8")).toBe('<iothreadpin iothread="2" cpuset="0-3,8"/>');
  });

  it("defines as many iothreads as the disks use and pins each to the cpuset", () => {
    const dom = parse(validationDomain([{ ...fileQcow2, iothread: 2 }, blockThin], { cpuset: "4-7" }));
    expect(one(dom, "iothreads").textContent).toBe("2");
    expect(all(dom, "iothreadpin").map(attrsOf)).toEqual([
      { iothread: "1", cpuset: "4-7" },
      { iothread: "2", cpuset: "4-7" },
    ]);
    expect(all(dom, "disk")).toHaveLength(2);
  });

  it("writes no metadata when no disk has a name, serial or labels, and a scsi controller for sd* disks", () => {
    const dom = parse(validationDomain([{ ...blockThin, target: { dev: "sda" } }]));
    expect(all(dom, "metadata")).toHaveLength(0);
    expect(attrsOf(one(dom, "devices/controller"))).toEqual({
      type: "scsi",
      index: "0",
      model: "virtio-scsi",
    });
  });
});
