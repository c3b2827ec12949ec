import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { cephxUserFor } from "@stowage/core";
import {
  CreateExportRequestSchema,
  ExportArtifactSchema,
  ExportKind,
  GetDiskXmlRequestSchema,
  OperationResultSchema,
} from "@stowage/proto";
import { applyPoolReports, upsertHost } from "@stowage/store";
import { GiB, hostRegistration, poolReport } from "@stowage/store/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getDiskXml } from "./disk-xml.js";
import { createExport } from "./export-service.js";
import { applyResult } from "./results.js";
import { addVolume, countRows, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";

/** virt-xml-validate on the element inside a minimal domain (libvirt-clients and libxml2-utils, install-deps). */
function validate(disk: string, iothreads = 0): void {
  const dir = mkdtempSync(join(tmpdir(), "stowage-disk-xml-"));
  const file = join(dir, "domain.xml");
  writeFileSync(
    file,
    `<domain type='kvm'><name>check</name><memory unit='MiB'>64</memory>${iothreads ? `<iothreads>${iothreads}</iothreads>` : ""}<os><type arch='x86_64'>hvm</type></os><devices>${disk}</devices></domain>`,
  );
  execFileSync("virt-xml-validate", [file, "domain"], { stdio: "pipe" });
}

describe("GetDiskXml (on PGlite)", () => {
  let f: ServiceFixture;
  const req = (o: Partial<{ volume: string; hostId: string; targetDev: string; iothread: number }>) =>
    create(GetDiskXmlRequestSchema, o);

  beforeAll(async () => {
    f = await openServiceFixture();
    await f.addPool("files", "dir", ["qcow2", "raw"]);
    await f.addPool("thin", "lvmthin", ["raw"]);
    await f.addPool("ceph", "rbd", ["raw"]);
    await upsertHost(
      f.sql,
      hostRegistration("h2", { initiatorName: "iqn.2026-12.test:h2", addresses: ["203.0.113.12"] }),
    );
    await upsertHost(
      f.sql,
      hostRegistration("h3", { initiatorName: "iqn.2026-12.test:h3", addresses: ["203.0.113.13"] }),
    );
  });
  afterAll(async () => {
    await f?.close();
  });

  const volume = async (
    name: string,
    poolId: string,
    format: "qcow2" | "raw",
    hostPath: string,
    cpuSet = "",
  ) => {
    const v = await addVolume(f.sql, { name, poolId, format });
    await f.sql`update volumes set host_path = ${hostPath}, cpu_set = ${cpuSet} where id = ${v.id}`;
    return v;
  };

  it("gives a dir volume on its own host as a file disk that libvirt's schema accepts", async () => {
    const v = await volume("vm1-disk0", "h1/files", "qcow2", "/var/lib/stowage/pools/files/x.qcow2", "2-3");
    const res = await getDiskXml(f.ctx, req({ volume: "vm1-disk0", iothread: 1 }));
    expect(res.diskXml).toContain('<disk type="file" device="disk">');
    expect(res.diskXml).toContain('<source file="/var/lib/stowage/pools/files/x.qcow2"/>');
    expect(res.diskXml).toMatch(/<driver name="qemu" type="qcow2"[^>]*cache="none"/);
    expect(res.diskXml).toContain(`<serial>${v.id}</serial>`);
    expect(res.diskXml).toContain('<target dev="vdb" bus="virtio"/>');
    expect(res.iothreadPinXml).toBe('<iothreadpin iothread="1" cpuset="2-3"/>');
    expect(res.cpuSet).toBe("2-3");
    validate(res.diskXml, 1);
  });

  it("gives a thin LVM volume as a block disk with cache none, io native and discard unmap", async () => {
    await volume("db-data", "h1/thin", "raw", "/dev/vg0/vol-thin");
    const res = await getDiskXml(f.ctx, req({ volume: "db-data", hostId: "h1", targetDev: "vdc" }));
    expect(res.diskXml).toContain('<disk type="block" device="disk">');
    expect(res.diskXml).toContain('<source dev="/dev/vg0/vol-thin"/>');
    expect(res.diskXml).toMatch(/cache="none"/);
    expect(res.diskXml).toMatch(/io="native"/);
    expect(res.diskXml).toMatch(/discard="unmap"/);
    expect(res.iothreadPinXml).toBe("");
    validate(res.diskXml);
  });

  it("gives another host the iSCSI network disk of the export that allows it, CHAP by secret usage only", async () => {
    const v = await volume("shared-disk", "h1/files", "qcow2", "/var/lib/stowage/pools/files/s.qcow2");
    const made = await createExport(
      f.ctx,
      create(CreateExportRequestSchema, {
        volume: v.id,
        kind: ExportKind.ISCSI,
        allowedHostIds: ["h2"],
        chap: true,
      }),
      "test",
    );
    const uri = `iscsi://203.0.113.11:3260/iqn.2026-12.io.stowage:${v.id}/1`;
    // Not active yet: nothing to attach.
    await expect(getDiskXml(f.ctx, req({ volume: v.id, hostId: "h2" }))).rejects.toThrow(
      /no active iscsi export/,
    );
    await applyResult(
      f.ctx,
      create(OperationResultSchema, {
        operationId: made.operation!.id,
        hostId: "h1",
        success: true,
        export: create(ExportArtifactSchema, { uri }),
      }),
    );
    const res = await getDiskXml(f.ctx, req({ volume: v.id, hostId: "h2", iothread: 1 }));
    expect(res.diskXml).toContain('<disk type="network" device="disk">');
    expect(res.diskXml).toContain(`<source protocol="iscsi" name="iqn.2026-12.io.stowage:${v.id}/1">`);
    expect(res.diskXml).toContain('<host name="203.0.113.11" port="3260"/>');
    expect(res.diskXml).toContain('<iqn name="iqn.2026-12.test:h2"/>');
    expect(res.diskXml).toContain(`<auth username="${made.export.chapUser}">`);
    expect(res.diskXml).toContain(`<secret type="iscsi" usage="stowage-${made.export.id}"/>`);
    expect(res.diskXml).toMatch(/<driver name="qemu" type="qcow2"/);
    validate(res.diskXml, 1);
    // Host h3 is not on the ACL: refused.
    await expect(getDiskXml(f.ctx, req({ volume: v.id, hostId: "h3" }))).rejects.toThrow(
      /no active iscsi export allows host h3/,
    );
  });

  it("gives a host with an RBD grant the rbd network disk with its own cephx user, the key by secret usage", async () => {
    const v = await volume("ceph-disk", "h1/ceph", "raw", "rbd/x");
    const made = await createExport(
      f.ctx,
      create(CreateExportRequestSchema, { volume: v.id, kind: ExportKind.RBD, allowedHostIds: ["h2"] }),
      "test",
    );
    await applyResult(
      f.ctx,
      create(OperationResultSchema, {
        operationId: made.operation!.id,
        hostId: "h1",
        success: true,
        export: create(ExportArtifactSchema, {
          uri: `rbd://203.0.113.11:3300,203.0.113.12/rbd/stowage-${v.id}`,
        }),
      }),
    );
    const res = await getDiskXml(f.ctx, req({ volume: v.id, hostId: "h2" }));
    expect(res.diskXml).toContain(`<source protocol="rbd" name="rbd/stowage-${v.id}">`);
    expect(res.diskXml).toContain('<host name="203.0.113.11" port="3300"/>');
    expect(res.diskXml).toContain('<host name="203.0.113.12" port="3300"/>');
    expect(res.diskXml).toContain(`<auth username="${cephxUserFor(made.export.id, "h2")}">`);
    expect(res.diskXml).toContain(`<secret type="ceph" usage="stowage-${made.export.id}"/>`);
    validate(res.diskXml);
    await expect(getDiskXml(f.ctx, req({ volume: v.id, hostId: "h3" }))).rejects.toThrow(
      /no active rbd export allows host h3/,
    );
  });

  it("gives a host attached to a netfs share the nfs network disk of the volume's file, and refuses one that is not", async () => {
    const share = "nfs://203.0.113.20/srv/stowage";
    await f.addPool("shared", "netfs", ["qcow2", "raw"], { shared: true, share });
    await applyPoolReports(f.sql, "h2", [
      poolReport("shared", 100n * GiB, { kind: "netfs", formats: ["qcow2", "raw"], shared: true, share }),
    ]);
    const v = await volume("nfs-disk", "h1/shared", "qcow2", `${share}/vol-nfs.qcow2`);
    for (const host of ["h1", "h2"]) {
      const res = await getDiskXml(f.ctx, req({ volume: v.id, hostId: host }));
      expect(res.diskXml).toContain('<disk type="network" device="disk">');
      expect(res.diskXml).toContain('<source protocol="nfs" name="/srv/stowage/vol-nfs.qcow2">');
      expect(res.diskXml).toContain('<host name="203.0.113.20"/>');
      expect(res.diskXml).toMatch(/<driver name="qemu" type="qcow2"/);
      validate(res.diskXml);
    }
    await expect(getDiskXml(f.ctx, req({ volume: v.id, hostId: "h3" }))).rejects.toThrow(
      /whose share host h3 is not attached to/,
    );
  });

  it("refuses what it cannot give with a clear error, and writes nothing", async () => {
    await volume("remote-only", "h1/ceph", "raw", "rbd/vol-x");
    const audits = await countRows(f.sql, "audit_log");
    const cases: [Parameters<typeof req>[0], string, RegExp][] = [
      [{ volume: "" }, "invalid_argument", /volume is empty/],
      [{ volume: "vm1-disk0", targetDev: "hda'/>" }, "invalid_argument", /not a virtio disk name/],
      [{ volume: "nope" }, "not_found", /volume nope not found/],
      [{ volume: "vm1-disk0", hostId: "h9" }, "not_found", /host h9 not found/],
      [{ volume: "remote-only" }, "failed_precondition", /no active rbd export allows host h1/],
      [
        { volume: "vm1-disk0", hostId: "h2" },
        "failed_precondition",
        /no active iscsi export allows host h2.*--allow h2/,
      ],
    ];
    for (const [r, code, message] of cases) {
      const err = await getDiskXml(f.ctx, req(r)).catch((e: unknown) => e);
      expect(err, JSON.stringify(r)).toMatchObject({ code });
      expect((err as Error).message, JSON.stringify(r)).toMatch(message);
    }
    expect(await countRows(f.sql, "audit_log")).toBe(audits);
  });
});
