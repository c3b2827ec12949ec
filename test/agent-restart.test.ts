import { chmodSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { natsAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, startCluster, waitFor } from "./support/cluster.js";

interface VolumeJson {
  id: string;
  state: string;
}

describe.skipIf(!natsAvailable())(
  "an agent killed in the middle of an operation (real agents, PGlite)",
  () => {
    let c: Cluster;

    beforeAll(async () => {
      c = await startCluster({ database: "pglite", agents: [] });
    }, 180_000);
    afterAll(async () => {
      await c?.stop();
    });

    it("finishes that operation right after the agent is back, not after the 60 s ack wait", async () => {
      // A qemu-img that says when a create began and then takes its time: the agent is killed inside it.
      const fake = join(c.dir, "slow-tools");
      const began = join(c.dir, "create-began");
      mkdirSync(fake, { recursive: true });
      writeFileSync(
        join(fake, "qemu-img"),
        `#!/bin/sh\nif [ "$1" = create ]; then touch ${JSON.stringify(began)}; sleep 30; fi\nexec /usr/bin/qemu-img "$@"\n`,
      );
      chmodSync(join(fake, "qemu-img"), 0o755);
      const slow = await c.startAgent("crashy", { env: { PATH: `${fake}:${process.env.PATH}` } });

      const { volume } = await c.stowctlJson<{ volume: VolumeJson }>([
        "volume",
        "create",
        "mid-crash",
        "--size",
        "8M",
      ]);
      await waitFor("qemu-img create to begin", async () => existsSync(began) || undefined, 20_000);
      await slow.service.kill();

      await c.startAgent("crashy");
      const t0 = performance.now();
      const done = await waitFor(
        "the volume to become available",
        async () => {
          const v = await c.stowctlJson<VolumeJson>(["volume", "get", volume.id]);
          return v.state === "available" ? v : undefined;
        },
        30_000,
      );
      expect(done.id).toBe(volume.id);
      // The ack wait is 60 s; handing the command back at registration makes it a matter of a second or two.
      expect(performance.now() - t0).toBeLessThan(15_000);
    }, 120_000);
  },
);
