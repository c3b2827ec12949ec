import { describe, expect, it } from "vitest";
import { dropVolumeFindings } from "./agent-traffic.js";
import {
  dropOrphanFinding,
  type Finding,
  listFindings,
  orphanFindings,
  quarantineFinding,
  replaceFindings,
} from "./findings.js";
import { upsertHost } from "./hosts.js";
import { allocateExisting, ledgerDiscrepancies } from "./ledger.js";
import { applyPoolReports, getPool } from "./pools.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import { GiB, hostRegistration, newVolume, poolReport } from "./testing/fixtures.js";
import { insertVolume } from "./volumes.js";

function orphan(hostId: string, volumeId: string, pool = "p"): Finding {
  return {
    hostId,
    kind: "orphan",
    subject: volumeId,
    poolId: `${hostId}/${pool}`,
    detail: "artefact has no volume in the database",
    artefact: {
      sizeBytes: 3n * GiB,
      format: "qcow2",
      allocatedBytes: 1024n,
      path: `/pools/${volumeId}.qcow2`,
      operationId: "op-1",
    },
  };
}

describe.each(backends)("findings on %s", (_name, makeBackend) => {
  const db = migratedDatabase(makeBackend);

  it("keeps what the agent reported of an orphan's artefact, and refreshes it with each inventory", async () => {
    const { sql } = db();
    await replaceFindings(sql, "fa", [orphan("fa", "vol-a")]);
    const [first] = await orphanFindings(sql, "vol-a", "fa");
    expect(first).toMatchObject({
      sizeBytes: 3n * GiB,
      format: "qcow2",
      allocatedBytes: 1024n,
      path: "/pools/vol-a.qcow2",
    });
    const grown = orphan("fa", "vol-a");
    grown.artefact!.sizeBytes = 5n * GiB;
    await replaceFindings(sql, "fa", [grown]);
    const [again] = await orphanFindings(sql, "vol-a", "fa");
    expect(again?.sizeBytes).toBe(5n * GiB);
    expect(again?.seq).toBe(first?.seq);
  });

  it("keeps a quarantined orphan across inventories that no longer report it, and across deltas", async () => {
    const { sql } = db();
    await replaceFindings(sql, "fq", [orphan("fq", "vol-q"), orphan("fq", "vol-r")]);
    const q = await quarantineFinding(sql, {
      hostId: "fq",
      volumeId: "vol-q",
      by: "alice",
      reason: "forensics",
    });
    expect(q).toMatchObject({ quarantinedBy: "alice", quarantineReason: "forensics" });
    expect(q?.quarantinedAt).toBeInstanceOf(Date);
    await replaceFindings(sql, "fq", []);
    await dropVolumeFindings(sql, "fq", ["vol-q", "vol-r"]);
    const left = await listFindings(sql, { hostId: "fq" });
    expect(left.map((f) => [f.subject, f.quarantinedBy])).toEqual([["vol-q", "alice"]]);
    // Seen again: refreshed, still quarantined.
    await replaceFindings(sql, "fq", [orphan("fq", "vol-q")]);
    expect((await orphanFindings(sql, "vol-q", "fq"))[0]?.quarantinedBy).toBe("alice");
  });

  it("quarantines idempotently, keeping the first quarantine's author and reason", async () => {
    const { sql } = db();
    await replaceFindings(sql, "fi", [orphan("fi", "vol-i")]);
    const first = await quarantineFinding(sql, {
      hostId: "fi",
      volumeId: "vol-i",
      by: "alice",
      reason: "one",
    });
    const second = await quarantineFinding(sql, {
      hostId: "fi",
      volumeId: "vol-i",
      by: "bob",
      reason: "two",
    });
    expect(second).toMatchObject({ quarantinedBy: "alice", quarantineReason: "one" });
    expect(second?.quarantinedAt?.getTime()).toBe(first?.quarantinedAt?.getTime());
    expect(
      await quarantineFinding(sql, { hostId: "fi", volumeId: "vol-none", by: "a", reason: "" }),
    ).toBeUndefined();
  });

  it("refuses to quarantine anything but an orphan", async () => {
    const { sql } = db();
    await replaceFindings(sql, "fk", [
      { hostId: "fk", kind: "missing", subject: "vol-m", poolId: "fk/p", detail: "" },
    ]);
    await expect(sql`update findings set quarantined_at = now() where host_id = 'fk'`).rejects.toThrow(
      /findings_quarantine_orphans/,
    );
  });

  it("lists by host, pool and kind, in pages that follow one another", async () => {
    const { sql } = db();
    await replaceFindings(sql, "fl", [
      orphan("fl", "vol-1", "a"),
      orphan("fl", "vol-2", "b"),
      { hostId: "fl", kind: "missing", subject: "vol-3", poolId: "fl/a", detail: "" },
      { hostId: "fl", kind: "foreign", subject: "Some File.img", poolId: "", detail: "" },
    ]);
    const subjects = (rows: { subject: string }[]) => rows.map((r) => r.subject).sort();
    expect(subjects(await listFindings(sql, { hostId: "fl" }))).toEqual([
      "Some File.img",
      "vol-1",
      "vol-2",
      "vol-3",
    ]);
    expect(subjects(await listFindings(sql, { poolId: "fl/a" }))).toEqual(["vol-1", "vol-3"]);
    expect(subjects(await listFindings(sql, { hostId: "fl", kind: "orphan" }))).toEqual(["vol-1", "vol-2"]);
    const page1 = await listFindings(sql, { hostId: "fl", limit: 3 });
    const page2 = await listFindings(sql, { hostId: "fl", limit: 3, after: String(page1[2]!.seq) });
    expect(page1).toHaveLength(3);
    expect(subjects([...page1, ...page2])).toEqual(["Some File.img", "vol-1", "vol-2", "vol-3"]);
  });

  it("finds an orphan on every host that reports it, and forgets it once adopted", async () => {
    const { sql } = db();
    await replaceFindings(sql, "fm1", [orphan("fm1", "vol-shared")]);
    await replaceFindings(sql, "fm2", [orphan("fm2", "vol-shared")]);
    expect((await orphanFindings(sql, "vol-shared")).map((f) => f.hostId)).toEqual(["fm1", "fm2"]);
    await dropOrphanFinding(sql, "fm1", "vol-shared");
    expect((await orphanFindings(sql, "vol-shared")).map((f) => f.hostId)).toEqual(["fm2"]);
  });

  it("allocates an existing artefact's bytes within the pool's logical rule only, to the byte", async () => {
    const { sql } = db();
    await upsertHost(sql, hostRegistration("fx"));
    // Physically almost full (the artefacts are already there), logically room for 10 GiB.
    await applyPoolReports(sql, "fx", [
      poolReport("p", 10n * GiB, { usedBytes: 9n * GiB, freeBytes: 1n * GiB }),
    ]);
    await insertVolume(sql, newVolume("vol-x1", "fx/p", 6n * GiB));
    expect(await allocateExisting(sql, { poolId: "fx/p", volumeId: "vol-x1", bytes: 6n * GiB })).toBe(true);
    await insertVolume(sql, newVolume("vol-x2", "fx/p", 4n * GiB + 1n));
    expect(await allocateExisting(sql, { poolId: "fx/p", volumeId: "vol-x2", bytes: 4n * GiB + 1n })).toBe(
      false,
    );
    expect(await allocateExisting(sql, { poolId: "fx/p", volumeId: "vol-x2", bytes: 4n * GiB })).toBe(true);
    const p = await getPool(sql, "fx/p");
    expect([p?.allocatedBytes, p?.reservedBytes, p?.volumeCount]).toEqual([10n * GiB, 0n, 2]);
    expect((await ledgerDiscrepancies(sql)).filter((d) => d.poolId === "fx/p")).toEqual([]);
  });

  it("refuses an existing artefact beyond the pool's volume limit", async () => {
    const { sql } = db();
    await upsertHost(sql, hostRegistration("fv"));
    await applyPoolReports(sql, "fv", [poolReport("p", 10n * GiB, { maxVolumes: 1 })]);
    await insertVolume(sql, newVolume("vol-v1", "fv/p", GiB));
    await insertVolume(sql, newVolume("vol-v2", "fv/p", GiB));
    expect(await allocateExisting(sql, { poolId: "fv/p", volumeId: "vol-v1", bytes: GiB })).toBe(true);
    expect(await allocateExisting(sql, { poolId: "fv/p", volumeId: "vol-v2", bytes: GiB })).toBe(false);
  });
});
