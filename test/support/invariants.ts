import { readdirSync } from "node:fs";
import { type Database, ledgerDiscrepancies } from "@stowage/store";
import type { AgentProcess } from "./cluster.js";

/**
 * The invariants of docs/architecture.md that the crash-point matrix and the property test check at every quiet
 * point, on the database of a cluster whose agents have dir pools. Each returns what is wrong (empty: all holds).
 */

/** Waits until no operation is pending or sent and no volume or snapshot is in a transitional state. */
export async function waitQuiet(db: Database, timeoutMs = 180_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [busy] = await db.sql<{ ops: number; volumes: number; snapshots: number }[]>`
      select (select count(*)::int from operations where state in ('pending', 'sent')) as ops,
        (select count(*)::int from volumes where state in ('creating', 'deleting', 'resizing', 'reverting')) as volumes,
        (select count(*)::int from snapshots where state in ('creating', 'deleting')) as snapshots`;
    if (busy!.ops === 0 && busy!.volumes === 0 && busy!.snapshots === 0) return;
    if (Date.now() > deadline) {
      // What is stuck, for the failure message: the oldest operations still open, and the hosts not up.
      const ops = await db.sql<
        { id: string; kind: string; state: string; hostId: string; attempts: number; age: number }[]
      >`
        select id, kind, state, host_id, attempts, extract(epoch from now() - created_at)::int as age
        from operations where state in ('pending', 'sent') order by created_at limit 5`;
      const hosts = await db.sql<
        { id: string; state: string }[]
      >`select id, state from hosts where state <> 'up'`;
      throw new Error(
        `still in flight after ${timeoutMs / 1000} s: ${JSON.stringify(busy)}; oldest open operations ${JSON.stringify(ops)}; hosts not up ${JSON.stringify(hosts)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * The ledger equals what the volumes hold: every pool's reserved and allocated bytes are the sums of its
 * reservations, every available volume holds exactly its size (allocated), a deleted one nothing.
 */
export async function ledgerProblems(db: Database): Promise<string[]> {
  const out = (await ledgerDiscrepancies(db.sql)).map(
    (d) => `pool ${d.poolId}: ${d.column} is ${d.ledger}, its reservations sum to ${d.actual}`,
  );
  const holdings = await db.sql<
    { id: string; state: string; sizeBytes: bigint; bytes: bigint | null; rstate: string | null }[]
  >`select v.id, v.state, v.size_bytes, r.bytes, r.state as rstate
    from volumes v left join reservations r on r.volume_id = v.id`;
  for (const h of holdings) {
    if (h.state === "available" && (h.rstate !== "allocated" || h.bytes !== h.sizeBytes))
      out.push(
        `volume ${h.id} is available holding ${h.bytes ?? 0n} (${h.rstate ?? "no reservation"}), not its ${h.sizeBytes}`,
      );
    if (h.state === "deleted" && h.rstate !== null && h.rstate !== "released")
      out.push(`volume ${h.id} is deleted and still holds ${h.bytes} (${h.rstate})`);
  }
  return out;
}

/**
 * No artefact lacks a row and no row lacks an artefact: the image files at the top of each agent's dir pool are
 * exactly the volumes the database has on that host, less the deleted ones; an available one must have its file
 * (one in `error` may or may not).
 */
export async function artefactProblems(db: Database, agents: readonly AgentProcess[]): Promise<string[]> {
  const rows = await db.sql<{ id: string; hostId: string; state: string; format: string }[]>`
    select id, host_id, state, format from volumes`;
  const out: string[] = [];
  for (const a of agents) {
    const files = new Set(readdirSync(a.poolDir).filter((f) => /^vol-[0-9a-f]+\.(qcow2|raw)$/.test(f)));
    const mine = rows.filter((r) => r.hostId === a.name);
    const known = new Set(mine.filter((r) => r.state !== "deleted").map((r) => `${r.id}.${r.format}`));
    for (const f of files) if (!known.has(f)) out.push(`${a.name}: ${f} has no live row`);
    for (const r of mine)
      if (r.state === "available" && !files.has(`${r.id}.${r.format}`))
        out.push(`${a.name}: available volume ${r.id} has no file`);
  }
  return out;
}
