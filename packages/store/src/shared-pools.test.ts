import { describe, expect, it } from "vitest";
import { countsByHost, upsertHost } from "./hosts.js";
import { confirmReservation, ledgerDiscrepancies, reserveCapacity } from "./ledger.js";
import {
  applyPoolReportDeltas,
  applyPoolReports,
  attachedHostsOf,
  getPool,
  listPools,
  loadSchedulingView,
  poolHosts,
  poolNameOnHost,
  sharedPoolVolumesOfOwner,
} from "./pools.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import { GiB, hostRegistration, newVolume, poolReport, volumeInState } from "./testing/fixtures.js";

const SHARE = "nfs://203.0.113.10/export/vms";
const OTHER = "nfs://203.0.113.11/export/scratch";

/** A netfs pool report of the share: 500 GiB, `usedGiB` used (every host sees the same numbers). */
const nfs = (name: string, share: string, usedGiB = 0n, over = {}) =>
  poolReport(name, 500n * GiB, {
    kind: "netfs",
    formats: ["qcow2", "raw"],
    shared: true,
    share,
    usedBytes: usedGiB * GiB,
    freeBytes: (500n - usedGiB) * GiB,
    ...over,
  });

/** Which host carries each volume of the shared pool (its operations run there). */
async function hostsOfVolumes(sql: Parameters<typeof getPool>[0]): Promise<Record<string, string>> {
  const rows = await sql<{ id: string; hostId: string }[]>`
    select id, host_id from volumes where pool_id = 'a/vms' order by id`;
  return Object.fromEntries(rows.map((r) => [r.id, r.hostId]));
}

describe.each(backends)("shared pools on %s", (_name, makeBackend) => {
  const db = migratedDatabase(makeBackend);

  it("makes one pool of a share that two hosts report, with one ledger row, and attaches the second host", async () => {
    const { sql } = db();
    for (const h of ["a", "b", "c"]) await upsertHost(sql, hostRegistration(h));
    const a = await applyPoolReports(sql, "a", [poolReport("local", 100n * GiB), nfs("vms", SHARE, 10n)]);
    // Host b names the share otherwise in its config: the name is its own, the pool is a's.
    const b = await applyPoolReports(sql, "b", [nfs("shared-vms", SHARE, 12n)]);
    const c = await applyPoolReports(sql, "c", [nfs("vms", OTHER)]);
    expect(a.get("vms")).toEqual({ poolId: "a/vms", attached: false });
    expect(b.get("shared-vms")).toEqual({ poolId: "a/vms", attached: true });
    expect(c.get("vms")).toEqual({ poolId: "c/vms", attached: false });

    const pools = await sql<{ id: string; hostId: string; share: string }[]>`
      select id, host_id, share from pools where kind = 'netfs' order by id`;
    expect(pools).toEqual([
      { id: "a/vms", hostId: "a", share: SHARE },
      { id: "c/vms", hostId: "c", share: OTHER },
    ]);
    // b's report was the latest: the one pool carries its numbers (the same storage), counted once.
    const pool = (await getPool(sql, "a/vms"))!;
    expect([pool.totalBytes, pool.usedBytes, pool.shared, pool.share]).toEqual([
      500n * GiB,
      12n * GiB,
      true,
      SHARE,
    ]);
    expect(await attachedHostsOf(sql, ["a/vms", "c/vms"])).toEqual(new Map([["a/vms", ["b"]]]));
    expect(await poolHosts(sql, "a/vms")).toEqual([
      { hostId: "a", name: "vms", owner: true, present: true },
      { hostId: "b", name: "shared-vms", owner: false, present: true },
    ]);
    expect(await poolNameOnHost(sql, "a/vms", "b")).toBe("shared-vms");
    expect(await poolNameOnHost(sql, "a/vms", "a")).toBe("vms");
    expect(await poolNameOnHost(sql, "a/vms", "c")).toBeUndefined();

    // Listing b's pools shows the shared pool it is attached to; a's shows its own two; c's only its own.
    const ids = async (hostId: string) => (await listPools(sql, { hostId, limit: 10 })).map((p) => p.id);
    expect(await ids("a")).toEqual(["a/local", "a/vms"]);
    expect(await ids("b")).toEqual(["a/vms"]);
    expect(await ids("c")).toEqual(["c/vms"]);
    expect(await ids("")).toEqual(["a/local", "a/vms", "c/vms"]);
    // A host's pool count includes the shared pool it is attached to.
    expect((await countsByHost(sql, ["a", "b"])).get("b")).toEqual({ pools: 1, volumes: 0 });

    // Volumes carved from both hosts land in the one pool's ledger, to the byte.
    const carve = async (id: string, hostId: string, bytes: bigint) => {
      await volumeInState(sql, newVolume(id, "a/vms", bytes, { hostId }), "available");
      expect(await reserveCapacity(sql, { poolId: "a/vms", volumeId: id, bytes, ttlMs: 60_000 })).toBe(true);
      expect(await confirmReservation(sql, id)).toBe(true);
    };
    await carve("vol-sa1", "a", 3n * GiB);
    await carve("vol-sb1", "b", 5n * GiB);
    const held = (await getPool(sql, "a/vms"))!;
    expect([held.allocatedBytes, held.volumeCount]).toEqual([8n * GiB, 2]);
    expect(await ledgerDiscrepancies(sql)).toEqual([]);
    // Reports, full or delta, from either host never touch the ledger columns.
    await applyPoolReports(sql, "b", [nfs("shared-vms", SHARE, 20n)]);
    const d = await applyPoolReportDeltas(sql, "b", [nfs("shared-vms", SHARE, 21n)]);
    expect(d.get("shared-vms")).toEqual({ poolId: "a/vms", attached: true });
    const after = (await getPool(sql, "a/vms"))!;
    expect([after.usedBytes, after.allocatedBytes, after.volumeCount]).toEqual([21n * GiB, 8n * GiB, 2]);
    // The owner's inventory judges the share's volumes that b carved.
    const judged = await sharedPoolVolumesOfOwner(sql, "a");
    expect(judged.volumes.map((v) => v.id)).toEqual(["vol-sb1"]);
    expect((await sharedPoolVolumesOfOwner(sql, "b")).volumes).toEqual([]);
  });

  it("gives the scheduler's view the attached hosts with their state, and re-reads a pool by an attached host", async () => {
    const { sql } = db();
    await sql`update hosts set state = 'down' where id = 'b'`;
    const [row] = await loadSchedulingView(sql, { poolIds: ["a/vms"] });
    expect(row!.attached).toEqual([
      { hostId: "b", name: "shared-vms", up: false, schedulable: true, healthy: true },
    ]);
    const full = await loadSchedulingView(sql);
    expect(full.find((r) => r.pool.id === "a/local")!.attached).toEqual([]);
    expect(full.filter((r) => r.pool.kind === "netfs").map((r) => r.pool.id)).toEqual(["a/vms", "c/vms"]);
    // A change of host b (down, cordoned) is a change of the shared pools it reaches.
    expect((await loadSchedulingView(sql, { hostIds: ["b"] })).map((r) => r.pool.id)).toEqual(["a/vms"]);
    await sql`update hosts set state = 'up' where id = 'b'`;
  });

  it("detaches a host that stops reporting the share, and attaches it again when it reports it", async () => {
    const { sql } = db();
    await applyPoolReports(sql, "b", []);
    expect(await poolHosts(sql, "a/vms")).toEqual([
      { hostId: "a", name: "vms", owner: true, present: true },
      { hostId: "b", name: "shared-vms", owner: false, present: false },
    ]);
    expect(await attachedHostsOf(sql, ["a/vms"])).toEqual(new Map());
    expect((await listPools(sql, { hostId: "b", limit: 10 })).map((p) => p.id)).toEqual([]);
    // A detached host's delta changes nothing (it must report the share in a full inventory first).
    expect((await applyPoolReportDeltas(sql, "b", [nfs("shared-vms", SHARE, 99n)])).size).toBe(0);
    expect((await getPool(sql, "a/vms"))!.usedBytes).toBe(21n * GiB);
    const [row] = await loadSchedulingView(sql, { poolIds: ["a/vms"] });
    expect(row!.attached).toEqual([]);
    // b's settled volume in the share is a's now: a reaches the same file, and runs its operations.
    expect(await hostsOfVolumes(sql)).toEqual({ "vol-sa1": "a", "vol-sb1": "a" });
    await applyPoolReports(sql, "b", [nfs("shared-vms", SHARE, 21n)]);
    expect(await attachedHostsOf(sql, ["a/vms"])).toEqual(new Map([["a/vms", ["b"]]]));
    expect(await sql`select id from pools where host_id = 'b'`).toEqual([]);
  });

  it("moves a shared pool to an attached host when its owner stops reporting it, keeping its id and ledger", async () => {
    const { sql } = db();
    await volumeInState(sql, newVolume("vol-sa2", "a/vms", GiB, { hostId: "a" }), "deleting");
    await applyPoolReports(sql, "a", [poolReport("local", 100n * GiB)]);
    const pool = (await getPool(sql, "a/vms"))!;
    expect([pool.hostId, pool.name, pool.present, pool.allocatedBytes, pool.volumeCount]).toEqual([
      "b",
      "shared-vms",
      true,
      8n * GiB,
      2,
    ]);
    expect(await poolHosts(sql, "a/vms")).toEqual([
      { hostId: "b", name: "shared-vms", owner: true, present: true },
      { hostId: "a", name: "vms", owner: false, present: false },
    ]);
    expect((await listPools(sql, { hostId: "b", limit: 10 })).map((p) => p.id)).toEqual(["a/vms"]);
    expect(await ledgerDiscrepancies(sql)).toEqual([]);
    // The volumes a carried follow the pool to b; one with an operation in flight stays until it is done.
    expect(await hostsOfVolumes(sql)).toEqual({ "vol-sa1": "b", "vol-sb1": "b", "vol-sa2": "a" });
    // b's reports now write the pool as its owner; a reporting the share again attaches to it.
    await applyPoolReports(sql, "b", [nfs("shared-vms", SHARE, 22n)]);
    expect((await getPool(sql, "a/vms"))!.usedBytes).toBe(22n * GiB);
    const back = await applyPoolReports(sql, "a", [poolReport("local", 100n * GiB), nfs("vms", SHARE, 22n)]);
    expect(back.get("vms")).toEqual({ poolId: "a/vms", attached: true });
    expect(await poolHosts(sql, "a/vms")).toEqual([
      { hostId: "b", name: "shared-vms", owner: true, present: true },
      { hostId: "a", name: "vms", owner: false, present: true },
    ]);
    expect(await sql`select count(*)::int as n from pools where share = ${SHARE}`).toEqual([{ n: 1 }]);
    // The pool id a handed over stays b's row: a's report of another pool under that name does not write it.
    const other = await applyPoolReports(sql, "a", [
      poolReport("local", 100n * GiB),
      nfs("vms-2", SHARE, 22n),
      poolReport("vms", 10n * GiB),
    ]);
    expect(other.has("vms")).toBe(false);
    const kept = (await getPool(sql, "a/vms"))!;
    expect([kept.hostId, kept.kind, kept.share, kept.totalBytes]).toEqual(["b", "netfs", SHARE, 500n * GiB]);
    await applyPoolReports(sql, "a", [poolReport("local", 100n * GiB), nfs("vms", SHARE, 22n)]);
  });

  it("marks a shared pool absent when its last host stops reporting it, and the next host to report it takes it", async () => {
    const { sql } = db();
    await applyPoolReports(sql, "c", []);
    expect((await getPool(sql, "c/vms"))!.present).toBe(false);
    const d = await applyPoolReports(sql, "a", [
      poolReport("local", 100n * GiB),
      nfs("vms", SHARE),
      nfs("scratch", OTHER),
    ]);
    expect(d.get("scratch")).toEqual({ poolId: "c/vms", attached: false });
    const pool = (await getPool(sql, "c/vms"))!;
    expect([pool.hostId, pool.name, pool.present]).toEqual(["a", "scratch", true]);
    expect(await poolHosts(sql, "c/vms")).toEqual([
      { hostId: "a", name: "scratch", owner: true, present: true },
      { hostId: "c", name: "vms", owner: false, present: false },
    ]);
  });

  it("makes one pool when two hosts report a new share in concurrent transactions", async () => {
    const { sql } = db();
    const share = "nfs://203.0.113.12/export/race";
    for (const h of ["r1", "r2"]) await upsertHost(sql, hostRegistration(h));
    // r1's transaction writes the share's row and holds it uncommitted while r2's reports the same share.
    let wrote!: () => void;
    const written = new Promise<void>((resolve) => {
      wrote = resolve;
    });
    const first = sql.begin(async (tx) => {
      await applyPoolReports(tx, "r1", [nfs("race", share)]);
      wrote();
      await new Promise((resolve) => setTimeout(resolve, 300));
    });
    await written;
    const second = sql.begin((tx) => applyPoolReports(tx, "r2", [nfs("race", share)]));
    const [, landed] = await Promise.all([first, second]);
    expect(landed.get("race")).toEqual({ poolId: "r1/race", attached: true });
    expect(await sql`select id from pools where share = ${share}`).toEqual([{ id: "r1/race" }]);
    expect(await attachedHostsOf(sql, ["r1/race"])).toEqual(new Map([["r1/race", ["r2"]]]));
  });
});
