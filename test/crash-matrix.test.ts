import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { SnapshotService, VolumeFormat, VolumeService, WipeMode } from "@stowage/proto";
import { type Database, openDatabase } from "@stowage/store";
import { natsAvailable, postgresAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, startCluster } from "./support/cluster.js";
import { artefactProblems, ledgerProblems, waitQuiet } from "./support/invariants.js";

/**
 * The crash-point matrix of issue 10 (docs/testkit.md): for each operation and each phase boundary, a fault point
 * (packages/telemetry `faultPoint`, armed through STOWAGE_FAULT_FILE) kills the controller or the agent right
 * there with SIGKILL; it is started again, and once nothing is in flight: the volume is in a final state, the
 * ledger equals what the volumes hold, no artefact lacks a row and no row lacks an artefact. The test prints the
 * matrix (operation x phase -> outcome). A real controller on PostgreSQL and one real agent with a dir pool.
 */
const why = !postgresAvailable()
  ? "no PostgreSQL: set STOWAGE_TEST_PG_URL (or install postgresql-15)"
  : !natsAvailable()
    ? "no nats-server on PATH (or STOWAGE_NATS_SERVER)"
    : "";

const MiB = 1024n * 1024n;
const PHASES = [
  { name: "before-commit", who: "controller" },
  { name: "after-commit", who: "controller" },
  { name: "after-publish", who: "controller" },
  { name: "after-tool", who: "agent" },
  { name: "after-result", who: "agent" },
] as const;

type Api = { volumes: ReturnType<typeof volumesClient>; snapshots: ReturnType<typeof snapshotsClient> };
const volumesClient = (url: string) => createClient(VolumeService, createGrpcTransport({ baseUrl: url }));
const snapshotsClient = (url: string) => createClient(SnapshotService, createGrpcTransport({ baseUrl: url }));

interface Row {
  op: string;
  /** The operation kind its fault points name. */
  kind: string;
  /** Makes what the operation needs (a volume, a snapshot); answers the ids the action uses. */
  setup(api: Api, n: number): Promise<{ volume?: string; snapshot?: string }>;
  act(api: Api, n: number, on: { volume?: string; snapshot?: string }): Promise<unknown>;
}

describe.skipIf(why !== "")(`the crash-point matrix${why ? ` - skipped: ${why}` : ""}`, () => {
  let c: Cluster;
  let db: Database;
  let faultFile: string;
  const agentEnv = () => ({ STOWAGE_FAULT_FILE: faultFile });

  beforeAll(async () => {
    const dir = (await import("node:os")).tmpdir();
    faultFile = join(dir, `stowage-fault-${process.pid}-${Date.now()}`);
    writeFileSync(faultFile, "");
    c = await startCluster({
      database: "postgres",
      agents: [],
      env: { STOWAGE_FAULT_FILE: faultFile, STOWAGE_RELAY_GRACE_MS: "200" },
    });
    await c.startAgent("m1", { env: agentEnv() });
    db = await openDatabase({ url: c.databaseUrl, max: 2 });
  }, 180_000);
  afterAll(async () => {
    await db?.close();
    await c?.stop();
  });

  const api = (): Api => ({ volumes: volumesClient(c.url), snapshots: snapshotsClient(c.url) });
  const volume = async (a: Api, name: string) => {
    const r = await a.volumes.createVolume({ name, sizeBytes: 16n * MiB, format: VolumeFormat.QCOW2 });
    await waitQuiet(db, 30_000);
    return r.volume!.id;
  };
  const snapshot = async (a: Api, volumeId: string, name: string) => {
    const r = await a.snapshots.createSnapshot({ volume: volumeId, name });
    await waitQuiet(db, 30_000);
    return r.snapshot!.id;
  };

  const ROWS: Row[] = [
    {
      op: "create",
      kind: "create_volume",
      setup: async () => ({}),
      act: (a, n) =>
        a.volumes.createVolume({ name: `cm-create-${n}`, sizeBytes: 16n * MiB, format: VolumeFormat.QCOW2 }),
    },
    {
      op: "delete",
      kind: "delete_volume",
      setup: async (a, n) => ({ volume: await volume(a, `cm-delete-${n}`) }),
      act: (a, _n, on) => a.volumes.deleteVolume({ volume: on.volume! }),
    },
    {
      op: "resize",
      kind: "resize_volume",
      setup: async (a, n) => ({ volume: await volume(a, `cm-resize-${n}`) }),
      act: (a, _n, on) => a.volumes.resizeVolume({ volume: on.volume!, newSizeBytes: 24n * MiB }),
    },
    {
      op: "clone",
      kind: "clone_volume",
      setup: async (a, n) => {
        const v = await volume(a, `cm-clone-src-${n}`);
        return { volume: v, snapshot: await snapshot(a, v, "base") };
      },
      act: (a, n, on) =>
        a.volumes.cloneVolume({
          sourceVolume: on.volume!,
          sourceSnapshot: on.snapshot!,
          name: `cm-clone-${n}`,
        }),
    },
    {
      op: "snapshot",
      kind: "create_snapshot",
      setup: async (a, n) => ({ volume: await volume(a, `cm-snap-${n}`) }),
      act: (a, _n, on) => a.snapshots.createSnapshot({ volume: on.volume!, name: "s1" }),
    },
    {
      op: "revert",
      kind: "revert_snapshot",
      setup: async (a, n) => {
        const v = await volume(a, `cm-revert-${n}`);
        return { volume: v, snapshot: await snapshot(a, v, "r1") };
      },
      act: (a, _n, on) => a.snapshots.revertSnapshot({ volume: on.volume!, snapshot: on.snapshot! }),
    },
    {
      op: "wipe",
      kind: "delete_volume",
      setup: async (a, n) => ({ volume: await volume(a, `cm-wipe-${n}`) }),
      act: (a, _n, on) => a.volumes.deleteVolume({ volume: on.volume!, wipe: WipeMode.ZERO }),
    },
  ];

  it(
    "after a crash at every phase boundary of every operation, everything settles and every invariant holds",
    async () => {
      const matrix: Record<string, Record<string, string>> = {};
      const failures: string[] = [];
      let n = 0;
      for (const row of ROWS) {
        const cells: Record<string, string> = {};
        matrix[row.op] = cells;
        for (const phase of PHASES) {
          n++;
          const a = api();
          const on = await row.setup(a, n);
          const before = new Set((await db.sql<{ id: string }[]>`select id from volumes`).map((r) => r.id));
          writeFileSync(faultFile, `${phase.name}:${row.kind}`);
          const victim =
            phase.who === "controller" ? c.controller : c.agents.find((x) => x.name === "m1")!.service;
          // The call may die with the controller; what it started is what the matrix is about.
          await row.act(a, n, on).catch(() => undefined);
          const died = await Promise.race([
            victim.exited.then(() => true),
            new Promise<false>((r) => setTimeout(() => r(false), 20_000)),
          ]);
          writeFileSync(faultFile, "");
          if (!died) {
            cells[phase.name] = "NOT REACHED";
            failures.push(`${row.op} ${phase.name}: the fault point was not reached`);
            continue;
          }
          if (phase.who === "controller") await c.startController();
          else await c.startAgent("m1", { env: agentEnv() });
          let outcome: string;
          try {
            await waitQuiet(db, 60_000);
            const made = (
              await db.sql<{ id: string; state: string }[]>`select id, state from volumes order by created_at`
            ).filter((v) => !before.has(v.id));
            const subject = on.volume
              ? (
                  await db.sql<
                    { state: string; sizeBytes: bigint }[]
                  >`select state, size_bytes from volumes where id = ${on.volume}`
                )[0]
              : undefined;
            outcome =
              row.op === "create" || row.op === "clone"
                ? made.length === 0
                  ? "not created"
                  : made.map((v) => v.state).join(",")
                : row.op === "resize"
                  ? `${subject?.state} ${(subject?.sizeBytes ?? 0n) / MiB}M`
                  : row.op === "snapshot" || row.op === "revert"
                    ? `${subject?.state}; snap ${(
                        await db.sql<
                          { state: string }[]
                        >`select state from snapshots where volume_id = ${on.volume!} order by created_at`
                      )
                        .map((s) => s.state)
                        .join(",")}`
                    : `${subject?.state}`;
            const problems = [...(await ledgerProblems(db)), ...(await artefactProblems(db, c.agents))];
            if (problems.length > 0) {
              failures.push(`${row.op} ${phase.name}: ${problems.join("; ")}`);
              outcome += " BROKEN";
            }
          } catch (err) {
            outcome = "STUCK";
            failures.push(`${row.op} ${phase.name}: ${(err as Error).message}`);
          }
          cells[phase.name] = outcome;
        }
      }
      const width = 28;
      const lines = [
        ["operation", ...PHASES.map((p) => `${p.name} (${p.who})`)].map((s) => s.padEnd(width)).join(""),
        ...ROWS.map((r) =>
          [r.op, ...PHASES.map((p) => matrix[r.op]![p.name]!)].map((s) => s.padEnd(width)).join(""),
        ),
      ];
      console.log(`crash-point matrix (outcome after the restart):\n${lines.join("\n")}`);
      expect(failures).toEqual([]);
    },
    20 * 60_000,
  );
});
