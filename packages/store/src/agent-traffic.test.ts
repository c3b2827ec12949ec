import { describe, expect, it } from "vitest";
import {
  applyPoolDeltas,
  dropVolumeFindings,
  markInventoryReceived,
  volumesInFluxOnHost,
} from "./agent-traffic.js";
import { listFindings, replaceFindings } from "./findings.js";
import { getHost, upsertHost } from "./hosts.js";
import { applyPoolReports, getPool } from "./pools.js";
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

  it("applies a delta's pools only: the others keep their report and stay present, unknown pools are skipped", async () => {
    const { sql } = db();
    await upsertHost(sql, hostRegistration("dl"));
    await applyPoolReports(sql, "dl", [poolReport("a", 100n * GiB), poolReport("b", 100n * GiB)]);
    const n = await applyPoolDeltas(sql, "dl", [
      poolReport("a", 100n * GiB, { usedBytes: 7n * GiB, freeBytes: 93n * GiB, provisionedBytes: 9n * GiB }),
      poolReport("new", 10n * GiB),
    ]);
    expect(n).toBe(1);
    const a = await getPool(sql, "dl/a");
    expect([a?.usedBytes, a?.freeBytes, a?.reportedProvisionedBytes, a?.present]).toEqual([
      7n * GiB,
      93n * GiB,
      9n * GiB,
      true,
    ]);
    const b = await getPool(sql, "dl/b");
    expect([b?.usedBytes, b?.present, b?.healthy]).toEqual([0n, true, true]);
    expect(await getPool(sql, "dl/new")).toBeUndefined();
  });

  it("drops the orphan and missing findings of the named volumes only", async () => {
    const { sql } = db();
    await upsertHost(sql, hostRegistration("fd"));
    await replaceFindings(sql, "fd", [
      { hostId: "fd", kind: "missing", subject: "vol-a", poolId: "fd/p", detail: "" },
      { hostId: "fd", kind: "orphan", subject: "vol-b", poolId: "fd/p", detail: "" },
      { hostId: "fd", kind: "missing", subject: "vol-c", poolId: "fd/p", detail: "" },
      { hostId: "fd", kind: "foreign", subject: "vol-a", poolId: "", detail: "" },
    ]);
    await dropVolumeFindings(sql, "fd", ["vol-a", "vol-b"]);
    const left = (await listFindings(sql, { hostId: "fd" })).map((f) => `${f.kind}:${f.subject}`).sort();
    expect(left).toEqual(["foreign:vol-a", "missing:vol-c"]);
  });
});
