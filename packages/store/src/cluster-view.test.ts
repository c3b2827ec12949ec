import { describe, expect, it } from "vitest";
import { antiAffinityGroupMembers, hostNumaNodes, loadClusterViewRows } from "./cluster-view.js";
import { upsertHost } from "./hosts.js";
import { applyPoolReports } from "./pools.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import {
  GiB,
  hostRegistration,
  newVolume,
  operationInState,
  poolReport,
  volumeInState,
} from "./testing/fixtures.js";

describe.each(backends)("the scheduler's view on %s", (_name, makeBackend) => {
  const db = migratedDatabase(makeBackend);

  it("reads the pools, the hosts' NUMA nodes and where each anti-affinity group's volumes are", async () => {
    const { sql } = db();
    const node = (id: number, cpuList: string) => ({ id, cpuList, cpus: [], memoryBytes: 1, distances: [] });
    await upsertHost(sql, hostRegistration("a", { zone: "z1", numaNodes: [node(0, "0-3"), node(1, "4-7")] }));
    await upsertHost(sql, hostRegistration("b", { zone: "z2" }));
    await applyPoolReports(sql, "a", [poolReport("p", 100n * GiB)]);
    await applyPoolReports(sql, "b", [poolReport("p", 100n * GiB), poolReport("q", 100n * GiB)]);
    await sql`update hosts set state = 'down', schedulable = false where id = 'b'`;
    for (const [id, poolId, group, state] of [
      ["vol-g1", "a/p", "db", "available"],
      ["vol-g2", "b/p", "db", "creating"],
      ["vol-g3", "b/q", "db", "deleted"],
      ["vol-g4", "b/q", "web", "available"],
      ["vol-g5", "a/p", "", "available"],
    ] as const)
      await volumeInState(sql, newVolume(id, poolId, GiB, { antiAffinityGroup: group }), state);
    for (const [id, state] of [
      ["op-v1", "pending"],
      ["op-v2", "sent"],
      ["op-v3", "succeeded"],
    ] as const)
      await operationInState(sql, id, "b/q", state, 0, { volumeId: "vol-g4" });

    expect(await hostNumaNodes(sql)).toEqual(
      new Map([
        [
          "a",
          [
            { id: 0, cpuList: "0-3" },
            { id: 1, cpuList: "4-7" },
          ],
        ],
        ["b", []],
      ]),
    );
    const groups = await antiAffinityGroupMembers(sql);
    expect([...groups.keys()].sort()).toEqual(["db", "web"]);
    expect(groups.get("db")?.sort((x, y) => x.hostId.localeCompare(y.hostId))).toEqual([
      { hostId: "a", zone: "z1" },
      { hostId: "b", zone: "z2" },
    ]);
    expect(groups.get("web")).toEqual([{ hostId: "b", zone: "z2" }]);

    const view = await loadClusterViewRows(sql);
    expect(view.pools.map((p) => [p.pool.id, p.hostState, p.hostSchedulable, p.zone, p.load])).toEqual([
      ["a/p", "up", true, "z1", 0],
      ["b/p", "down", false, "z2", 0],
      ["b/q", "down", false, "z2", 2],
    ]);
    expect(view.numa).toEqual(await hostNumaNodes(sql));
    expect(view.groups).toEqual(groups);
  });
});
