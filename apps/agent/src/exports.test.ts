import { execFileSync } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { AckPolicy } from "@nats-io/jetstream";
import { agentConsumerName, COMMAND_STREAM, commandSubject, resultSubject } from "@stowage/bus";
import { createTgtExporter, createToolRunner, iqnForVolume } from "@stowage/drivers";
import {
  AgentCommandSchema,
  ExportKind,
  OperationKind,
  type OperationResult,
  RegisterAgentResponseSchema,
} from "@stowage/proto";
import { createLogger } from "@stowage/telemetry";
import {
  freePort,
  makeTempDir,
  natsAvailable,
  startTgtd,
  type TgtdService,
  tgtAvailable,
} from "@stowage/testkit";
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
