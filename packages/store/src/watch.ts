import type { Queryable } from "./db.js";

/**
 * What a watch reads: the rows changed by transactions that its previous snapshot did not see, and the snapshot
 * of this read, which the next read starts from (migration 0007, docs/architecture.md "Watches").
 */
export interface Changes<R> {
  rows: R[];
  snapshot: string;
}

/** The database's current snapshot (`xmin:xmax:xip,...`), where a watch starts. */
export async function currentSnapshot(sql: Queryable): Promise<string> {
  const [row] = await sql<{ snap: string }[]>`select pg_current_snapshot()::text as snap`;
  return row!.snap;
}

/** Splits the answer of a changes query (one row with the snapshot, then the changed rows, if any). */
export function changes<R extends { id: string }>(
  rows: readonly (R & { watchSnapshot: string })[],
): Changes<R> {
  const snapshot = rows[0]?.watchSnapshot;
  if (snapshot === undefined) throw new Error("a changes query answered no row");
  const out: R[] = [];
  for (const { watchSnapshot: _s, ...row } of rows) if (row.id !== null) out.push(row as unknown as R);
  return { rows: out, snapshot };
}
