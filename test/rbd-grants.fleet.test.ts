import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { cephxUserFor, newCephxKey } from "@stowage/core";
import {
  type CephAdmin,
  createToolRunner,
  listStowageCephxClients,
  rbdImageForVolume,
  type ToolInvocationEvent,
} from "@stowage/drivers";
import { AgentCommandSchema, ExportKind, OperationKind } from "@stowage/proto";
import { createLogger } from "@stowage/telemetry";
import {
  CEPH_INSTALL_HINT,
  type CephCluster,
  cephAvailable,
  cephToolPath,
  type Fleet,
  makeTempDir,
  netnsAvailable,
  startCeph,
  startFleet,
  type TempDir,
} from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ExportManager, openExportManager } from "../apps/agent/src/exports.js";

/**
 * RBD access grants across separate network hosts: Ceph (mon and OSD) runs on fleet host h1, bound to
 * 203.0.113.11, and so does the serving agent's export manager (its ceph and rbd commands run in h1's
 * namespace). Host h2 (B) is granted the volume and reads it from its own namespace with its own key and only
 * the monitors of the export's URI; host h3 (C), granted another volume, is refused; after the revoke B is
 * refused too.
 */
const net = netnsAvailable();
const skip = !net.ok ? net.reason : !cephAvailable() ? `no Ceph here (${CEPH_INSTALL_HINT})` : undefined;
const title = skip ? `RBD grants on the test fleet: SKIPPED, ${skip}` : "RBD grants on the test fleet";
const tag = (process.pid % 100_000).toString(36);

const H1 = "203.0.113.11";
const VOL = `vol-${"3a".repeat(16)}`;
const OTHER = `vol-${"3b".repeat(16)}`;
const EXP = `exp-${"4a".repeat(16)}`;
const OTHER_EXP = `exp-${"4b".repeat(16)}`;
const MiB = 1024 * 1024;

function command(
  kind: "create" | "delete",
  exportId: string,
  volumeId: string,
  allowed: { hostId: string; cephxKey: string }[],
) {
  const value = {
    exportId,
    volumeId,
    kind: ExportKind.RBD,
    allowed: allowed.map((a) => ({ ...a, initiatorName: "", addresses: [] })),
  };
  return create(AgentCommandSchema, {
    operationId: `op-${kind}-${exportId}`,
    kind: kind === "create" ? OperationKind.CREATE_EXPORT : OperationKind.DELETE_EXPORT,
    hostId: "h1",
    poolName: "ceph",
    payload: kind === "create" ? { case: "createExport", value } : { case: "deleteExport", value },
  });
}

describe.skipIf(skip !== undefined)(title, { timeout: 180_000 }, () => {
  let fleet: Fleet;
  let tmp: TempDir;
  let ceph: CephCluster;
  let exports: ExportManager;
  const events: ToolInvocationEvent[] = [];
  const kB = newCephxKey();
  const kC = newCephxKey();
  let data: Buffer;
  const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
  const userB = cephxUserFor(EXP, "h2");
  const userC = cephxUserFor(OTHER_EXP, "h3");
  let monitors: string[] = [];
  /** The serving host's admin access (h1's ceph through the shim). */
  let admin: CephAdmin;
  const listStowage = () => listStowageCephxClients(admin);

  /**
   * What a client host has: the monitors (from the export's URI), its user and key in a 0600 keyring, and
   * nothing of the cluster's own files. It reads the whole image with qemu-img, inside its namespace.
   */
  const readOn = async (host: "h2" | "h3", user: string, key: string, volumeId: string) => {
    const dir = join(tmp.path, host);
    await mkdir(dir, { recursive: true });
    const conf = join(dir, "ceph.conf");
    await writeFile(conf, `[global]\nmon host = ${monitors.map((m) => `v2:${m}`).join(",")}\n`);
    const keyring = join(dir, "keyring");
    await writeFile(keyring, `[client.${user}]\n\tkey = ${key}\n`, { mode: 0o600 });
    const out = join(dir, `${volumeId}.raw`);
    const r = await fleet.exec(
      host,
      "qemu-img",
      [
        ...["convert", "-f", "raw", "-O", "raw"],
        `rbd:rbd/${rbdImageForVolume(volumeId)}:id=${user}:keyring=${keyring}:conf=${conf}`,
        out,
      ],
      { timeoutMs: 60_000 },
    );
    return { ...r, sha: r.exitCode === 0 ? sha256(await readFile(out)) : "" };
  };

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-rbd-fleet-");
    fleet = await startFleet({ prefix: `rg${tag}`, hosts: 3 });
    const h1 = fleet.node("h1");
    expect(h1.address).toBe(H1);
    ceph = await startCeph({
      netns: h1.netns,
      address: h1.address,
      store: "memstore",
      osdSizeBytes: 2 * 1024 ** 3,
    });
    // The serving agent runs on h1: its ceph and rbd run in h1's namespace (a shim first on PATH).
    const bin = join(tmp.path, "h1-bin");
    await mkdir(bin);
    for (const tool of ["ceph", "rbd"]) {
      await writeFile(
        join(bin, tool),
        `#!/bin/sh\nexec ip netns exec ${h1.netns} ${cephToolPath(tool)} "$@"\n`,
        {
          mode: 0o755,
        },
      );
    }
    admin = {
      runner: createToolRunner({ pathPrefix: [bin], onInvocation: (e) => events.push(e) }),
      conn: { cephConf: ceph.conf, cephUser: ceph.id, keyring: ceph.keyring },
    };
    const rbd = (...args: string[]) => admin.runner.run("rbd", args);
    for (const v of [VOL, OTHER]) {
      await rbd(
        "create",
        "--size",
        "8M",
        "--no-progress",
        ...["--conf", ceph.conf],
        `rbd/${rbdImageForVolume(v)}`,
      );
    }
    data = randomBytes(8 * MiB);
    await writeFile(join(tmp.path, "data.raw"), data);
    const w = await fleet.exec("h1", "qemu-img", [
      ...["convert", "-n", "-f", "raw", "-O", "raw", join(tmp.path, "data.raw")],
      `rbd:rbd/${rbdImageForVolume(VOL)}:conf=${ceph.conf}:id=admin:keyring=${ceph.keyring}`,
    ]);
    expect(w.exitCode, w.stderr).toBe(0);
    exports = await openExportManager({
      stateDir: join(tmp.path, "h1-state"),
      rbdPool: (name) => (name === "ceph" ? { admin, cephPool: ceph.pool } : undefined),
      log: createLogger("test", "silent"),
    });
  }, 180_000);
  afterAll(async () => {
    await exports?.stop();
    await ceph?.stop({ fast: true });
    await fleet?.teardown();
    await tmp?.cleanup();
  });

  it("serves the export with the monitors on h1's fleet address in its URI", async () => {
    const r = await exports.handle(command("create", EXP, VOL, [{ hostId: "h2", cephxKey: kB }]));
    expect(r.success).toBe(true);
    expect(r.export?.uri).toBe(`rbd://${H1}:3300/rbd/${rbdImageForVolume(VOL)}`);
    monitors = String(r.export?.uri ?? "")
      .slice("rbd://".length)
      .split("/")[0]!
      .split(",");
    expect(monitors).toEqual([`${H1}:3300`]);
    const other = await exports.handle(command("create", OTHER_EXP, OTHER, [{ hostId: "h3", cephxKey: kC }]));
    expect(other.success).toBe(true);
  });

  it("lets B read the volume from its own host with its own key: the same sha256 as written", async () => {
    const b = await readOn("h2", userB, kB, VOL);
    expect(b.stderr).toBe("");
    expect(b.exitCode).toBe(0);
    expect(b.sha).toBe(sha256(data));
  });

  it("refuses C's key (granted on another volume) on this one, from C's host", async () => {
    const c = await readOn("h3", userC, kC, VOL);
    expect(c.exitCode).not.toBe(0);
    expect(c.stderr).toMatch(/Operation not permitted|Permission denied/);
    // C reaches its own volume: the refusal is the caps, not the network.
    expect((await readOn("h3", userC, kC, OTHER)).exitCode).toBe(0);
  });

  it("converges a grant repeated 10 times to one client with one key", async () => {
    for (let i = 0; i < 10; i++) {
      expect(
        (await exports.handle(command("create", EXP, VOL, [{ hostId: "h2", cephxKey: kB }]))).success,
      ).toBe(true);
    }
    const ours = (await listStowage()).filter((c) => c.user.startsWith(cephxUserFor(EXP, "")));
    expect(ours.map((c) => c.user)).toEqual([userB]);
  });

  it("refuses B after the export is deleted", async () => {
    expect((await exports.handle(command("delete", EXP, VOL, []))).success).toBe(true);
    const b = await readOn("h2", userB, kB, VOL);
    expect(b.exitCode).not.toBe(0);
    expect(b.sha).toBe("");
    expect((await listStowage()).map((c) => c.user)).toEqual([userC]);
  });

  it("never showed a key in an argv", () => {
    expect(events.some((e) => e.argv.join(" ").startsWith("auth import"))).toBe(true);
    const shown = JSON.stringify(events);
    for (const k of [kB, kC]) expect(shown).not.toContain(k);
  });
});
