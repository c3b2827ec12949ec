import { describe, expect, it } from "vitest";
import { markInventoryReceived, volumesInFluxOnHost } from "./agent-traffic.js";
import { getHost, upsertHost } from "./hosts.js";
import { applyPoolReports } from "./pools.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import { GiB, hostRegistration, newVolume, poolReport, volumeInState } from "./testing/fixtures.js";

describe.each(backends)("agent traffic on %s", (_name, makeBackend) => {
  const db = migratedDatabase(makeBackend);

  it("records an inventory's arrival for a registered host only", async () => {
    const { sql } = db();
    expect(await markInventoryReceived(sql, "nobody")).toBe(false);
    expect(await getHost(sql, "nobody")).toBeUndefined();
    await upsertHost(sql, hostRegistration("inv"));
    expect((await getHost(sql, "inv"))?.inventoryAt).toBeNull();
    expect(await markInventoryReceived(sql, "inv")).toBe(true);
    expect((await getHost(sql, "inv"))?.inventoryAt).toBeInstanceOf(Date);
  });

  it("finds the host's volumes in flux: being created or deleted, or deleted in the last minute", async () => {
    const { sql } = db();
    for (const id of ["fx", "other"]) {
      await upsertHost(sql, hostRegistration(id));
      await applyPoolReports(sql, id, [poolReport("p", 100n * GiB)]);
    }
    for (const [id, poolId, state, deletedAgo] of [
      ["vol-f1", "fx/p", "creating", null],
      ["vol-f2", "fx/p", "deleting", null],
      ["vol-f3", "fx/p", "deleted", "10 seconds"],
      ["vol-f4", "fx/p", "deleted", "2 minutes"],
      ["vol-f5", "fx/p", "available", null],
      ["vol-f6", "fx/p", "resizing", null],
      ["vol-f7", "other/p", "creating", null],
    ] as const) {
      await volumeInState(sql, newVolume(id, poolId, GiB), state);
      if (deletedAgo)
        await sql`update volumes set deleted_at = now() - ${deletedAgo}::interval where id = ${id}`;
    }
    expect([...(await volumesInFluxOnHost(sql, "fx"))].sort()).toEqual(["vol-f1", "vol-f2", "vol-f3"]);
  });
});
