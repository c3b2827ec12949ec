import { chmodSync, existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { natsAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, startCluster, waitFor } from "./support/cluster.js";

interface VolumeJson {
  id: string;
  name: string;
  state: string;
  poolId: string;
  sizeBytes: string;
  hostPath?: string;
  error?: { code: string; message: string };
}
interface PoolJson {
  id: string;
  capacity: { provisionedBytes: string; reservedBytes: string };
}
interface FindingJson {
  hostId: string;
  kind: string;
  subject: string;
}

/** An operation's time to live here: its command's deadline is a fifth earlier (3.2 s). */
const TTL_MS = 4000;

describe.skipIf(!natsAvailable())(
  "the late create: a host away past the time to live comes back (real agents, PGlite)",
  () => {
    let c: Cluster;

    beforeAll(async () => {
      c = await startCluster({
        database: "pglite",
        agents: [],
        env: { STOWAGE_RESERVATION_TTL_MS: String(TTL_MS) },
      });
    }, 180_000);
    afterAll(async () => {
      await c?.stop();
    });

    const volume = (id: string) => c.stowctlJson<VolumeJson>(["volume", "get", id]);
    /** What each pool's ledger holds equals the volumes that hold bytes (every volume not in error here). */
    async function ledgerAgrees(): Promise<void> {
      const pools = await c.stowctlJson<PoolJson[]>(["pool", "list"]);
      const volumes = await c.stowctlJson<VolumeJson[]>(["volume", "list"]);
      for (const p of pools) {
        const held = BigInt(p.capacity.provisionedBytes) + BigInt(p.capacity.reservedBytes);
        const holding = volumes
          .filter((v) => v.poolId === p.id && v.state !== "error")
          .reduce((sum, v) => sum + BigInt(v.sizeBytes), 0n);
        expect(held, p.id).toBe(holding);
      }
    }
    /** The volume ids that have an artefact in an agent's pool directory. */
    const artefacts = (poolDir: string) =>
      readdirSync(poolDir)
        .map((f) => /^(vol-[0-9a-f]{32})\.(raw|qcow2)$/.exec(f)?.[1])
        .filter((id) => id !== undefined);

    it("a host down past the deadline refuses the create when it is back: the volume is error, no disk, nothing held", async () => {
      const away = await c.startAgent("away");
      await away.service.kill();
      // Placed while the host still counts as up: the command waits in JetStream for the agent.
      const { volume: v } = await c.stowctlJson<{ volume: VolumeJson }>([
        "volume",
        "create",
        "while-away",
        "--size",
        "8M",
        "--pool",
        "away/default",
      ]);
      const failed = await waitFor(
        "the controller to fail the create at its time to live",
        async () => {
          const got = await volume(v.id);
          return got.state === "error" ? got : undefined;
        },
        30_000,
      );
      expect(failed.error?.code).toBe("expired");
      await ledgerAgrees();

      // Back after the deadline: the agent takes the command and refuses it without running qemu-img.
      const back = await c.startAgent("away");
      await waitFor(
        "the agent to refuse the command",
        async () => {
          const log = await import("node:fs/promises").then((fs) =>
            fs.readFile(join(c.dir, "hosts", "away", "agent.log"), "utf8"),
          );
          return log.includes("operation refused: its deadline has passed") || undefined;
        },
        30_000,
      );
      expect(artefacts(back.poolDir)).toEqual([]);
      expect((await volume(v.id)).state).toBe("error");
      await ledgerAgrees();
      // Two full inventories later the host and the database still agree: no finding about it.
      await delay(2500);
      const findings = await c.stowctlJson<FindingJson[]>(["finding", "list", "--host", "away"]);
      expect(findings.filter((f) => f.subject === v.id)).toEqual([]);
    }, 120_000);

    it("a create that started before the deadline and finished after the controller gave up is adopted: available, held, no finding", async () => {
      // A qemu-img whose create takes longer than the time to live (a host that hangs, then comes back).
      const fake = join(c.dir, "slow-tools");
      const began = join(c.dir, "create-began");
      mkdirSync(fake, { recursive: true });
      writeFileSync(
        join(fake, "qemu-img"),
        `#!/bin/sh\nif [ "$1" = create ]; then touch ${JSON.stringify(began)}; sleep ${(TTL_MS + 3000) / 1000}; fi\nexec /usr/bin/qemu-img "$@"\n`,
      );
      chmodSync(join(fake, "qemu-img"), 0o755);
      const slow = await c.startAgent("slow", { env: { PATH: `${fake}:${process.env.PATH}` } });
      const { volume: v } = await c.stowctlJson<{ volume: VolumeJson }>([
        "volume",
        "create",
        "late-create",
        "--size",
        "8M",
        "--pool",
        "slow/default",
      ]);
      await waitFor("qemu-img create to begin", async () => existsSync(began) || undefined, 20_000);
      // The controller gives up at the time to live, while qemu-img still runs.
      const failed = await waitFor(
        "the controller to fail the create",
        async () => {
          const got = await volume(v.id);
          return got.state === "error" ? got : undefined;
        },
        30_000,
      );
      expect(failed.error?.code).toBe("expired");
      // Then the host's success arrives, late: the volume is held again and available.
      const adopted = await waitFor(
        "the late success to be adopted",
        async () => {
          const got = await volume(v.id);
          return got.state === "available" ? got : undefined;
        },
        30_000,
      );
      expect(adopted.hostPath).toContain(v.id);
      expect(artefacts(slow.poolDir)).toEqual([v.id]);
      await ledgerAgrees();
      // The inventory agrees: no orphan, nothing missing.
      await delay(2500);
      const findings = await c.stowctlJson<FindingJson[]>(["finding", "list", "--host", "slow"]);
      expect(findings).toEqual([]);
    }, 120_000);
  },
);
