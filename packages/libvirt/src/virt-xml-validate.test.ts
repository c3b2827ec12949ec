import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { DiskSpec } from "./disk.js";
import { validationDomain } from "./domain.js";
import { blockThin, fileQcow2, iscsiChap, nfsQcow2, rbdAuth } from "./test-fixtures.js";

// Every generated <disk>, in a minimal domain, against libvirt 9.0's own RelaxNG schemas (Debian
// libvirt-clients ships them with virt-xml-validate, which runs xmllint from libxml2-utils). A missing tool
// fails these tests, with how to install it: a skipped schema check would pass for XML libvirt refuses.

const INSTALL =
  "install them with `apt-get install -y libvirt-clients libxml2-utils` (or `bash scripts/install-deps.sh --test-backends`)";

function onPath(tool: string, env: NodeJS.ProcessEnv): boolean {
  return spawnSync("/bin/sh", ["-c", 'command -v "$1"', "sh", tool], { env }).status === 0;
}

/** Runs `virt-xml-validate FILE domain`; throws when the tools are missing or the document does not validate. */
function virtXmlValidate(file: string, env: NodeJS.ProcessEnv = process.env): void {
  const missing = ["virt-xml-validate", "xmllint"].filter((t) => !onPath(t, env));
  if (missing.length > 0) throw new Error(`${missing.join(" and ")} not found on PATH: ${INSTALL}`);
  const run = spawnSync("virt-xml-validate", [file, "domain"], { env, encoding: "utf8", timeout: 20_000 });
  if (run.error) throw new Error(`virt-xml-validate did not run: ${run.error.message}; ${INSTALL}`);
  if (run.status !== 0) {
    throw new Error(`virt-xml-validate ${file} domain exited ${run.status}:\n${run.stdout}${run.stderr}`);
  }
}

/** Reads one XPath string value with xmllint, a parser other than the one that wrote the document. */
function xpath(file: string, expr: string): string {
  const run = spawnSync("xmllint", ["--xpath", expr, file], { encoding: "utf8" });
  if (run.status !== 0) throw new Error(`xmllint --xpath ${expr} exited ${run.status}: ${run.stderr}`);
  return run.stdout.replace(/\n$/, ""); // xmllint 2.9 ends a string result with a newline
}

const dir = mkdtempSync(join(tmpdir(), "stowage-libvirt-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

function write(xml: string): string {
  const file = join(dir, `domain-${++n}.xml`);
  writeFileSync(file, xml);
  return file;
}

const cases: [string, DiskSpec[], { iothreads?: number; cpuset?: string }?][] = [
  ["file qcow2", [fileQcow2]],
  ["file raw", [{ ...fileQcow2, format: "raw" }]],
  [
    "file qcow2, readonly, on iothread 1 pinned to 0-3",
    [{ ...fileQcow2, readonly: true, iothread: 1 }],
    { cpuset: "0-3" },
  ],
  ["file raw, shareable, io native", [{ ...fileQcow2, format: "raw", shareable: true, io: "native" }]],
  ["file qcow2, shareable and readonly", [{ ...fileQcow2, shareable: true, readonly: true }]],
  ["file qcow2 on a scsi target", [{ ...fileQcow2, target: { dev: "sdb" } }]],
  ["file qcow2 on a sata target", [{ ...fileQcow2, target: { dev: "sdc", bus: "sata" } }]],
  ["block thin", [blockThin]],
  ["block thick", [{ ...blockThin, thin: false }]],
  ["block thin, readonly", [{ ...blockThin, readonly: true }]],
  [
    "block, shareable, iothread 2 of 2",
    [{ ...blockThin, shareable: true, iothread: 2 }],
    { cpuset: "2,4-5" },
  ],
  [
    "block, cache writeback io threads discard ignore",
    [{ ...blockThin, cache: "writeback", io: "threads", discard: "ignore" }],
  ],
  ["block, io_uring", [{ ...blockThin, io: "io_uring" }]],
  ["iscsi with CHAP", [iscsiChap]],
  ["iscsi without CHAP", [{ ...iscsiChap, chap: undefined }]],
  ["iscsi LUN holding qcow2", [{ ...iscsiChap, format: "qcow2" }]],
  [
    "iscsi, LUN 0, readonly, iothread 1",
    [{ ...iscsiChap, lun: 0, readonly: true, iothread: 1 }],
    { cpuset: "0-3" },
  ],
  [
    "iscsi, portal by name, discard unmap",
    [{ ...iscsiChap, portal: { host: "tgt.h1.test", port: 3261 }, discard: "unmap" }],
  ],
  ["rbd with auth", [rbdAuth]],
  [
    "rbd without auth, IPv6 monitors",
    [
      {
        ...rbdAuth,
        auth: undefined,
        monitors: [
          { host: "2001:db8::31", port: 3300 },
          { host: "::ffff:203.0.113.32", port: 6789 },
        ],
      },
    ],
  ],
  ["rbd, shareable, iothread 1", [{ ...rbdAuth, shareable: true, iothread: 1 }]],
  ["nfs qcow2 with port", [nfsQcow2]],
  [
    "nfs raw without port, with identity",
    [{ ...nfsQcow2, format: "raw", port: undefined, identity: { user: "stowage", group: "+107" } }],
  ],
  ["nfs qcow2, readonly, iothread 1", [{ ...nfsQcow2, readonly: true, iothread: 1 }], { cpuset: "1" }],
  [
    "a name libvirt's alias cannot carry (metadata only)",
    [{ ...fileQcow2, alias: `<x y='1'> & "q"`, labels: { team: "a<b" } }],
  ],
  ["a path with a quote", [{ ...fileQcow2, path: `/srv/it's "my" <pool> & co/vol.qcow2` }]],
  [
    "every kind in one domain, three iothreads pinned to 0-3",
    [
      { ...fileQcow2, iothread: 1 },
      { ...blockThin, iothread: 2 },
      { ...iscsiChap, iothread: 3 },
      { ...rbdAuth, iothread: 1 },
      { ...nfsQcow2, target: { dev: "sda" }, alias: "nfs vol (shared)" },
    ],
    { iothreads: 3, cpuset: "0-3" },
  ],
];

describe("virt-xml-validate accepts every generated <disk> in a minimal domain", () => {
  it.each(cases)("%s", (_, disks, options) => {
    const file = write(validationDomain(disks, options));
    virtXmlValidate(file);
  });

  it("and refuses a broken one, so a pass means something (an NFS source without its <identity>)", () => {
    const xml = validationDomain([nfsQcow2]).replace("<identity/>", "");
    expect(() => virtXmlValidate(write(xml))).toThrow(/fails to validate|Relax-NG validity error/);
  });
});

describe("escaped text re-parses, read back by xmllint", () => {
  it("a name with <>&'\" and a path with ' come back as they went in", () => {
    const name = `<x y='1'> & "q"`;
    const path = `/srv/it's "my" <pool> & co/vol.qcow2`;
    const file = write(validationDomain([{ ...fileQcow2, alias: name, path }]));
    virtXmlValidate(file);
    expect(xpath(file, "string(//*[local-name()='volume']/@name)")).toBe(name);
    expect(xpath(file, "string(/domain/devices/disk/source/@file)")).toBe(path);
    expect(xpath(file, "count(/domain/devices/disk/alias)")).toBe("0");
  });
});

describe("without the tools", () => {
  it("the check fails (it does not skip) and says how to install them", () => {
    const file = write(validationDomain([fileQcow2]));
    expect(() => virtXmlValidate(file, { ...process.env, PATH: "/nonexistent" })).toThrow(
      /virt-xml-validate and xmllint not found on PATH: install them with `apt-get install -y libvirt-clients libxml2-utils`/,
    );
  });
});
