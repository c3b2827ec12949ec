import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { AckPolicy } from "@nats-io/jetstream";
import { agentConsumerName, COMMAND_STREAM, commandSubject, resultSubject } from "@stowage/bus";
import { cephxUserFor, newCephxKey } from "@stowage/core";
import {
  cephxKeyDigest,
  createTgtExporter,
  createToolRunner,
  iqnForVolume,
  listStowageCephxClients,
  rbdImageForVolume,
  revokeRbdAccess,
  type ToolInvocationEvent,
  type ToolRunner,
} from "@stowage/drivers";
import {
  AgentCommandSchema,
  ExportKind,
  OperationKind,
  type OperationResult,
  RegisterAgentResponseSchema,
} from "@stowage/proto";
import { createLogger, type Logger } from "@stowage/telemetry";
import {
  CEPH_INSTALL_HINT,
  type CephCluster,
  cephAvailable,
  cephToolPath,
  freePort,
  makeTempDir,
  natsAvailable,
  startCeph,
  startTgtd,
  type TgtdService,
  tgtAvailable,
} from "@stowage/testkit";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CommandConsumer, startCommandConsumer } from "./commands.js";
import { executeCommand } from "./executor.js";
import { type ExportManager, openExportManager } from "./exports.js";
import { createAgentMetrics } from "./metrics.js";
import { type BusFixture, createCommand, dirPool, openBusFixture, waitUntil } from "./testing/fixture.js";

const avail = tgtAvailable();
const title = avail.ok ? "the agent's exports (real tgtd)" : `the agent's exports: SKIPPED, ${avail.reason}`;
const VOL = `vol-${"0a".repeat(16)}`;

function command(
  kind: "create" | "delete",
  allowed: { hostId: string; initiatorName: string; addresses: string[] }[],
) {
  const value = {
    exportId: "exp-1",
    volumeId: VOL,
    kind: ExportKind.ISCSI,
    allowed,
    chapUser: "",
    chapSecret: "",
  };
  return create(AgentCommandSchema, {
    operationId: `op-${kind}`,
    kind: kind === "create" ? OperationKind.CREATE_EXPORT : OperationKind.DELETE_EXPORT,
    hostId: "h1",
    poolName: "default",
    payload: kind === "create" ? { case: "createExport", value } : { case: "deleteExport", value },
  });
}

describe.skipIf(!avail.ok)(title, () => {
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  let tgtd: TgtdService;
  let portal: string;
  const controlPort = 10_000 + (process.pid % 9_000);
  const opened: ExportManager[] = [];
  const open = async (intervalMs = 60_000) => {
    const m = await openExportManager({
      stateDir: join(tmp.path, "state"),
      exporter: createTgtExporter({ runner: createToolRunner(), controlPort }),
      portal,
      backing: async () => ({ type: "file", path: join(tmp.path, "pool", `${VOL}.raw`) }),
      log: createLogger("test", "silent"),
      intervalMs,
    });
    opened.push(m);
    return m;
  };
  const targets = async () =>
    (await tgtd.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).stdout;

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-agent-exports-");
    await mkdir(join(tmp.path, "pool"));
    await writeFile(join(tmp.path, "pool", `${VOL}.raw`), Buffer.alloc(8 << 20));
    portal = `127.0.0.1:${await freePort()}`;
    tgtd = await startTgtd({ dir: join(tmp.path, "tgtd"), portal, controlPort });
  }, 30_000);
  afterAll(async () => {
    for (const m of opened) await m.stop();
    await tgtd?.stop();
    await tmp?.cleanup();
  });

  it("serves a create_export as a target with the allowed host's ACL, and says where it is", async () => {
    const m = await open();
    const r = await m.handle(
      command("create", [
        { hostId: "h2", initiatorName: "iqn.2026-12.io.stowage:host-h2", addresses: ["127.0.0.2"] },
      ]),
    );
    expect(r.success).toBe(true);
    expect(r.export).toMatchObject({
      exportId: "exp-1",
      uri: `iscsi://${portal}/${iqnForVolume(VOL)}/1`,
      allowedHostIds: ["h2"],
    });
    const shown = await targets();
    expect(shown).toContain(iqnForVolume(VOL));
    expect(shown).toContain("127.0.0.2");
    expect(shown).toContain("iqn.2026-12.io.stowage:host-h2");
    // The same command again converges: one target.
    await m.handle(
      command("create", [
        { hostId: "h2", initiatorName: "iqn.2026-12.io.stowage:host-h2", addresses: ["127.0.0.2"] },
      ]),
    );
    expect((await targets()).split(iqnForVolume(VOL)).length - 1).toBe(1);
    expect(m.artifacts().map((a) => a.exportId)).toEqual(["exp-1"]);
  });

  it("puts its exports back when tgtd loses them, with no command, and keeps them across an agent restart", async () => {
    // Another agent process on the same state directory: it reads what it was told, and re-applies on its interval.
    const again = await open(200);
    expect(again.artifacts().map((a) => a.exportId)).toEqual(["exp-1"]);
    await tgtd.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "delete", "--force", "--tid", "1"]);
    expect(await targets()).not.toContain(iqnForVolume(VOL));
    const t0 = Date.now();
    while (!(await targets()).includes(iqnForVolume(VOL))) {
      if (Date.now() - t0 > 10_000) throw new Error("the export did not come back within 10 s");
      await new Promise((r) => setTimeout(r, 100));
    }
  });

  it("removes the target on delete_export, and keeps the state file private", async () => {
    const m = opened[opened.length - 1]!;
    expect((await m.handle(command("delete", []))).success).toBe(true);
    expect(await targets()).not.toContain(iqnForVolume(VOL));
    expect(m.artifacts()).toEqual([]);
    const mode = execFileSync("stat", ["-c", "%a", join(tmp.path, "state", "exports.json")], {
      encoding: "utf8",
    });
    expect(mode.trim()).toBe("600");
  });
});

describe("export commands on a host without iscsiPortal", () => {
  it("fail with a clear error and touch no pool", async () => {
    const r = await executeCommand(new Map(), "h1", command("create", []));
    expect(r.success).toBe(false);
    expect(r.error?.code).toBe("failed_precondition");
    expect(r.error?.message).toMatch(/serves no exports: set iscsiPortal/);
  });
});

describe.skipIf(!avail.ok || !natsAvailable())(
  avail.ok
    ? "export commands through NATS (real nats-server, tgtd, qemu-img)"
    : `export commands through NATS: SKIPPED, ${avail.reason}`,
  () => {
    let f: BusFixture;
    let tgtd: TgtdService;
    let consumer: CommandConsumer | undefined;
    let exports: ExportManager | undefined;
    const controlPort = 1_000 + (process.pid % 9_000);

    beforeAll(async () => {
      f = await openBusFixture();
      tgtd = await startTgtd({
        dir: join(f.tmp, "tgtd"),
        portal: `127.0.0.1:${await freePort()}`,
        controlPort,
      });
    }, 30_000);
    afterAll(async () => {
      await consumer?.stop(0);
      await exports?.stop();
      await tgtd?.stop();
      await f?.close();
    });

    it("makes the LUN of a dir volume's file and answers the export in its result", async () => {
      const hostId = "xh1";
      await f.bus.jsm.consumers.add(COMMAND_STREAM, {
        durable_name: agentConsumerName(hostId),
        filter_subject: commandSubject(hostId),
        ack_policy: AckPolicy.Explicit,
      });
      const pool = await dirPool("p", join(f.tmp, "pool"));
      exports = await openExportManager({
        stateDir: join(f.tmp, "state"),
        exporter: createTgtExporter({ runner: createToolRunner(), controlPort }),
        portal: tgtd.portal,
        backing: async (_pool, volumeId) => ({
          type: "file",
          path: (await pool.driver.info(volumeId))!.path,
        }),
        log: createLogger("test", "silent"),
      });
      const results: OperationResult[] = [];
      consumer = await startCommandConsumer({
        bus: f.bus,
        registration: create(RegisterAgentResponseSchema, {
          hostId,
          commandStream: COMMAND_STREAM,
          commandConsumer: agentConsumerName(hostId),
          resultSubject: resultSubject(hostId),
        }),
        pools: new Map([["p", pool]]),
        metrics: createAgentMetrics(hostId, () => []),
        log: createLogger("test", "silent"),
        poolConcurrency: 2,
        maxConcurrency: 4,
        exports,
        afterOperation: (_cmd, r) => {
          results.push(r);
        },
      });
      const made = createCommand(hostId, "p");
      const volumeId = (made.payload.value as { volumeId: string }).volumeId;
      await f.publish(made);
      await waitUntil("the volume", () => results.length === 1);
      const exp = create(AgentCommandSchema, {
        operationId: "op-export",
        kind: OperationKind.CREATE_EXPORT,
        hostId,
        poolName: "p",
        payload: {
          case: "createExport",
          value: {
            exportId: "exp-x",
            volumeId,
            kind: ExportKind.ISCSI,
            allowed: [
              { hostId: "xh2", initiatorName: "iqn.2026-12.io.stowage:host-xh2", addresses: ["127.0.0.3"] },
            ],
          },
        },
      });
      await f.publish(exp);
      await waitUntil("the export", () => results.length === 2);
      expect(results[1]).toMatchObject({
        success: true,
        export: { exportId: "exp-x", allowedHostIds: ["xh2"] },
      });
      const shown = (await tgtd.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).stdout;
      expect(shown).toContain(iqnForVolume(volumeId));
      expect(shown).toContain((await pool.driver.info(volumeId))!.path);
    });
  },
);

// ---- RBD exports: cephx grants against a real one-node Ceph ----

const cephOk = cephAvailable();
const RBD_VOL = `vol-${"0b".repeat(16)}`;
const OTHER_VOL = `vol-${"0c".repeat(16)}`;
const RBD_EXP = `exp-${"1a".repeat(16)}`;
const OTHER_EXP = `exp-${"1b".repeat(16)}`;

function rbdCommand(
  kind: "create" | "delete",
  o: {
    exportId?: string;
    volumeId?: string;
    poolName?: string;
    allowed?: { hostId: string; cephxKey: string }[];
  },
) {
  const value = {
    exportId: o.exportId ?? RBD_EXP,
    volumeId: o.volumeId ?? RBD_VOL,
    kind: ExportKind.RBD,
    allowed: (o.allowed ?? []).map((a) => ({ ...a, initiatorName: "", addresses: [] })),
  };
  return create(AgentCommandSchema, {
    operationId: `op-rbd-${kind}`,
    kind: kind === "create" ? OperationKind.CREATE_EXPORT : OperationKind.DELETE_EXPORT,
    hostId: "h1",
    poolName: o.poolName ?? "ceph",
    payload: kind === "create" ? { case: "createExport", value } : { case: "deleteExport", value },
  });
}

/** A logger that keeps every call, to check that no key is ever logged. */
function capturingLogger(into: unknown[]): Logger {
  const l: Record<string, unknown> = {};
  for (const level of ["trace", "debug", "info", "warn", "error", "fatal"]) {
    l[level] = (...args: unknown[]) => into.push([level, ...args]);
  }
  l.child = () => l;
  return l as unknown as Logger;
}

describe.skipIf(!cephOk)(
  cephOk
    ? "the agent's RBD exports (real Ceph): a cephx client per allowed host"
    : `the agent's RBD exports: SKIPPED, no Ceph here (${CEPH_INSTALL_HINT})`,
  { timeout: 120_000 },
  () => {
    let ceph: CephCluster;
    let tmp: Awaited<ReturnType<typeof makeTempDir>>;
    let admin: { runner: ToolRunner; conn: { cephConf: string; cephUser: string; keyring: string } };
    const events: ToolInvocationEvent[] = [];
    const logged: unknown[] = [];
    const keys: string[] = [];
    const opened: ExportManager[] = [];
    let sha: string;
    const userOf = (exportId: string, hostId: string) => cephxUserFor(exportId, hostId);
    const newKey = () => {
      const k = newCephxKey();
      keys.push(k);
      return k;
    };
    let kB: string;
    let kC: string;

    const open = async (intervalMs = 60_000) => {
      const m = await openExportManager({
        stateDir: join(tmp.path, "state"),
        rbdPool: (name) => (name === "ceph" ? { admin, cephPool: ceph.pool } : undefined),
        log: capturingLogger(logged),
        intervalMs,
      });
      opened.push(m);
      return m;
    };
    const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    /** What host `user` does with its own key: a 0600 keyring, and qemu-img reading the image through librbd. */
    const readAs = async (user: string, key: string, volumeId: string) => {
      const keyring = join(tmp.path, `${user}.keyring`);
      await writeFile(keyring, `[client.${user}]\n\tkey = ${key}\n`, { mode: 0o600 });
      const out = join(tmp.path, `${user}.raw`);
      const r = await execa(
        "qemu-img",
        [
          ...["convert", "-f", "raw", "-O", "raw"],
          `rbd:${ceph.pool}/${rbdImageForVolume(volumeId)}:id=${user}:keyring=${keyring}:conf=${ceph.conf}`,
          out,
        ],
        { reject: false, stdin: "ignore", timeout: 60_000 },
      );
      return {
        ok: r.exitCode === 0,
        stderr: r.stderr,
        sha: r.exitCode === 0 ? sha256(await readFile(out)) : "",
      };
    };
    const clientsOf = async (exportId: string) =>
      (await listStowageCephxClients(admin))
        .map((c) => c.user)
        .filter((u) => u.startsWith(cephxUserFor(exportId, "")));

    beforeAll(async () => {
      tmp = await makeTempDir("stowage-agent-rbd-exports-");
      ceph = await startCeph({ store: "memstore", osdSizeBytes: 2 * 1024 ** 3 });
      admin = {
        runner: createToolRunner({ onInvocation: (e) => events.push(e) }),
        conn: { cephConf: ceph.conf, cephUser: ceph.id, keyring: ceph.keyring },
      };
      const rbdAdmin = ["--conf", ceph.conf, "--id", ceph.id, "--keyring", ceph.keyring];
      const data = randomBytes(4 << 20);
      sha = sha256(data);
      await writeFile(join(tmp.path, "data.raw"), data);
      for (const v of [RBD_VOL, OTHER_VOL]) {
        await execa("rbd", [
          ...rbdAdmin,
          "create",
          "--size",
          "4M",
          "--no-progress",
          `rbd/${rbdImageForVolume(v)}`,
        ]);
      }
      await execa("qemu-img", [
        ...["convert", "-n", "-f", "raw", "-O", "raw", join(tmp.path, "data.raw")],
        `rbd:rbd/${rbdImageForVolume(RBD_VOL)}:conf=${ceph.conf}:id=admin:keyring=${ceph.keyring}`,
      ]);
      kB = newKey();
      kC = newKey();
    }, 120_000);
    afterAll(async () => {
      for (const m of opened) await m.stop();
      await ceph?.stop({ fast: true });
      await tmp?.cleanup();
    });

    it("grants the allowed host its own client on create_export; its key reads the volume, another export's key does not", async () => {
      const m = await open();
      const r = await m.handle(rbdCommand("create", { allowed: [{ hostId: "h2", cephxKey: kB }] }));
      expect(r.success).toBe(true);
      expect(r.export).toMatchObject({
        exportId: RBD_EXP,
        volumeId: RBD_VOL,
        kind: ExportKind.RBD,
        uri: `rbd://127.0.0.1:${ceph.monPort}/rbd/${rbdImageForVolume(RBD_VOL)}`,
        allowedHostIds: ["h2"],
      });
      // Host C is allowed on another export (another volume) only.
      const other = await m.handle(
        rbdCommand("create", {
          exportId: OTHER_EXP,
          volumeId: OTHER_VOL,
          allowed: [{ hostId: "h3", cephxKey: kC }],
        }),
      );
      expect(other.success).toBe(true);

      const b = await readAs(userOf(RBD_EXP, "h2"), kB, RBD_VOL);
      expect(b.stderr).toBe("");
      expect(b.sha).toBe(sha);
      const c = await readAs(userOf(OTHER_EXP, "h3"), kC, RBD_VOL);
      expect(c.ok).toBe(false);
      expect(c.stderr).toMatch(/Operation not permitted|Permission denied/);
      expect((await readAs(userOf(OTHER_EXP, "h3"), kC, OTHER_VOL)).ok).toBe(true);
    });

    it("converges a create_export repeated 10 times to one client with one key", async () => {
      const m = opened[0]!;
      for (let i = 0; i < 10; i++) {
        expect(
          (await m.handle(rbdCommand("create", { allowed: [{ hostId: "h2", cephxKey: kB }] }))).success,
        ).toBe(true);
      }
      expect(await clientsOf(RBD_EXP)).toEqual([userOf(RBD_EXP, "h2")]);
      const [listed] = (await listStowageCephxClients(admin)).filter((c) => c.user === userOf(RBD_EXP, "h2"));
      expect(listed?.keyDigest).toBe(cephxKeyDigest(kB));
      expect(
        m
          .artifacts()
          .map((a) => a.exportId)
          .sort(),
      ).toEqual([RBD_EXP, OTHER_EXP].sort());
    });

    it("moves the grant when the allowed set changes: a host no longer allowed is revoked", async () => {
      const m = opened[0]!;
      const kD = newKey();
      await m.handle(rbdCommand("create", { allowed: [{ hostId: "h4", cephxKey: kD }] }));
      expect(await clientsOf(RBD_EXP)).toEqual([userOf(RBD_EXP, "h4")]);
      expect((await readAs(userOf(RBD_EXP, "h2"), kB, RBD_VOL)).ok).toBe(false);
      expect((await readAs(userOf(RBD_EXP, "h4"), kD, RBD_VOL)).sha).toBe(sha);
      await m.handle(rbdCommand("create", { allowed: [{ hostId: "h2", cephxKey: kB }] }));
      expect(await clientsOf(RBD_EXP)).toEqual([userOf(RBD_EXP, "h2")]);
    });

    it("puts back a grant lost behind its back, on the interval, and after an agent restart", async () => {
      await stopAll();
      await revokeRbdAccess(admin, userOf(RBD_EXP, "h2"));
      expect((await readAs(userOf(RBD_EXP, "h2"), kB, RBD_VOL)).ok).toBe(false);
      // A new agent process on the same state directory: it knows the export and checks on its interval.
      const again = await open(200);
      expect(
        again
          .artifacts()
          .map((a) => a.exportId)
          .sort(),
      ).toEqual([RBD_EXP, OTHER_EXP].sort());
      const t0 = Date.now();
      while (!(await clientsOf(RBD_EXP)).includes(userOf(RBD_EXP, "h2"))) {
        if (Date.now() - t0 > 10_000) throw new Error("the grant did not come back within 10 s");
        await new Promise((r) => setTimeout(r, 100));
      }
      expect((await readAs(userOf(RBD_EXP, "h2"), kB, RBD_VOL)).sha).toBe(sha);
      // Nothing to do when everything is in place.
      expect(await again.checkRbdGrants()).toEqual({ restored: [] });
    });

    it("refuses bad input with a clear error and grants nothing", async () => {
      const m = opened[opened.length - 1]!;
      const nope = newKey();
      const tries = [
        {
          cmd: rbdCommand("create", { exportId: "exp-1.x", allowed: [{ hostId: "h5", cephxKey: nope }] }),
          code: "invalid_argument",
          msg: /export id "exp-1.x" is not valid/,
        },
        {
          cmd: rbdCommand("create", {
            exportId: `exp-${"2a".repeat(16)}`,
            poolName: "default",
            allowed: [{ hostId: "h5", cephxKey: nope }],
          }),
          code: "failed_precondition",
          msg: /not an rbd pool/,
        },
        {
          cmd: rbdCommand("create", {
            exportId: `exp-${"2a".repeat(16)}`,
            allowed: [{ hostId: "h5", cephxKey: `${nope.slice(0, 20)}` }],
          }),
          code: "invalid_argument",
          msg: /not a cephx key/,
        },
        {
          cmd: rbdCommand("create", {
            exportId: `exp-${"2a".repeat(16)}`,
            allowed: [{ hostId: "h5", cephxKey: "" }],
          }),
          code: "invalid_argument",
          msg: /missing or not a cephx key/,
        },
        {
          cmd: rbdCommand("create", {
            exportId: `exp-${"2a".repeat(16)}`,
            allowed: [{ hostId: "H5;x", cephxKey: nope }],
          }),
          code: "invalid_argument",
          msg: /allowed host id/,
        },
        {
          cmd: rbdCommand("create", {
            exportId: `exp-${"2a".repeat(16)}`,
            volumeId: `vol-${"0d".repeat(16)}`,
            allowed: [{ hostId: "h5", cephxKey: nope }],
          }),
          code: "not_found",
          msg: /is not in ceph pool rbd/,
        },
      ];
      for (const t of tries) {
        const r = await executeCommand(new Map(), "h1", t.cmd, undefined, m);
        expect(r.success).toBe(false);
        expect(r.error?.code).toBe(t.code);
        expect(r.error?.message).toMatch(t.msg);
        expect(JSON.stringify(r, (_k, v) => (typeof v === "bigint" ? String(v) : v))).not.toContain(
          nope.slice(0, 20),
        );
      }
      expect(await clientsOf(`exp-${"2a".repeat(16)}`)).toEqual([]);
      expect(m.artifacts().map((a) => a.exportId)).not.toContain(`exp-${"2a".repeat(16)}`);
    });

    it("takes back what a failed create made: one host's grant fails, the other's is revoked", async () => {
      // A ceph whose auth import fails for host h6's client only (fault injection, first on PATH).
      const bin = join(tmp.path, "flaky-bin");
      await mkdir(bin, { recursive: true });
      const real = cephToolPath("ceph");
      await writeFile(
        join(bin, "ceph"),
        `#!/bin/sh\ncase "$*" in *"auth import"*) kr=$(cat); case "$kr" in *-h6]*) echo injected >&2; exit 1;; esac; printf '%s\\n' "$kr" | ${real} "$@"; exit $?;; esac\nexec ${real} "$@"\n`,
        { mode: 0o755 },
      );
      const flaky = { runner: createToolRunner({ pathPrefix: [bin] }), conn: admin.conn };
      const m = await openExportManager({
        stateDir: join(tmp.path, "flaky-state"),
        rbdPool: () => ({ admin: flaky, cephPool: ceph.pool }),
        log: capturingLogger(logged),
      });
      const exp = `exp-${"2b".repeat(16)}`;
      const r = await executeCommand(
        new Map(),
        "h1",
        rbdCommand("create", {
          exportId: exp,
          allowed: [
            { hostId: "h5", cephxKey: newKey() },
            { hostId: "h6", cephxKey: newKey() },
          ],
        }),
        undefined,
        m,
      ).finally(() => m.stop());
      expect(r.success).toBe(false);
      expect(r.error?.message).toMatch(/injected/);
      expect(await clientsOf(exp)).toEqual([]);
      expect(m.artifacts()).toEqual([]);
    });

    it("revokes every client on delete_export (B refused afterwards), again without error, and keeps the state private", async () => {
      const m = opened[opened.length - 1]!;
      expect((await m.handle(rbdCommand("delete", {}))).success).toBe(true);
      expect(await clientsOf(RBD_EXP)).toEqual([]);
      expect((await readAs(userOf(RBD_EXP, "h2"), kB, RBD_VOL)).ok).toBe(false);
      expect((await m.handle(rbdCommand("delete", {}))).success).toBe(true);
      expect(m.artifacts().map((a) => a.exportId)).toEqual([OTHER_EXP]);
      // The other export's client is untouched, and the interval does not bring the deleted one back.
      await new Promise((r) => setTimeout(r, 600));
      expect(await clientsOf(RBD_EXP)).toEqual([]);
      expect(await clientsOf(OTHER_EXP)).toEqual([userOf(OTHER_EXP, "h3")]);
      const mode = execFileSync("stat", ["-c", "%a", join(tmp.path, "state", "exports.json")], {
        encoding: "utf8",
      });
      expect(mode.trim()).toBe("600");
      expect(
        (await m.handle(rbdCommand("delete", { exportId: OTHER_EXP, volumeId: OTHER_VOL }))).success,
      ).toBe(true);
      expect((await listStowageCephxClients(admin)).map((c) => c.user)).toEqual([]);
    });

    it("never put a key in a logged line or in an argv the runner showed", () => {
      expect(logged.length).toBeGreaterThan(5);
      expect(events.some((e) => e.argv.join(" ").startsWith("auth import"))).toBe(true);
      const text = `${JSON.stringify(logged)}\n${JSON.stringify(events)}`;
      for (const k of keys) {
        expect(text).not.toContain(k);
        expect(text).not.toContain(k.slice(0, 20));
      }
    });

    async function stopAll() {
      for (const m of opened.splice(0)) await m.stop();
    }
  },
);
