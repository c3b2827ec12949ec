import type { PlacementRequest } from "@stowage/scheduler";
import {
  applyPoolReports,
  type Database,
  getPool,
  insertVolume,
  migrate,
  openDatabase,
  reserveCapacity,
  upsertHost,
} from "@stowage/store";
import { GiB, hostRegistration, newVolume, poolReport } from "@stowage/store/testing";
import { makeTempDir, testPostgres } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LiveView } from "./live-view.js";
import { checkConstraintTargets } from "./scheduling.js";

const req = (over: Partial<PlacementRequest> = {}): PlacementRequest => ({
  name: "v",
  sizeBytes: 10n * GiB,
  format: "raw",
  constraints: {},
  ...over,
});
const none = new Map();

/** Both databases the controller runs on; on PostgreSQL, two connections act as two writers. */
const backends: [string, () => Promise<{ open(): Promise<Database>; close(): Promise<void> }>][] = [
  [
    "pglite",
    async () => {
      const dir = await makeTempDir("stowage-live-view-");
      return { open: () => openDatabase({ dataDir: dir.path }), close: () => dir.cleanup() };
    },
  ],
  [
    "postgres",
    async () => {
      const pg = await testPostgres();
      return { open: () => openDatabase({ url: pg.url, max: 4 }), close: () => pg.release() };
    },
  ],
];

/** Waits until `check` holds (the feed is asynchronous on PostgreSQL), at most 5 s. */
async function eventually(check: () => boolean | Promise<boolean>, view: LiveView): Promise<void> {
  const until = Date.now() + 5000;
  for (;;) {
    await view.sync();
    if (await check()) return;
    if (Date.now() > until) throw new Error("the live view did not catch up within 5 s");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe.each(backends)("the live placement view (%s)", (_name, makeBackend) => {
  let backend: Awaited<ReturnType<typeof makeBackend>>;
  let db: Database;
  /** A second connection: another writer (an agent's inventory, another controller). */
  let other: Database | undefined;
  let view: LiveView;

  beforeAll(async () => {
    backend = await makeBackend();
    db = await backend.open();
    await migrate(db.sql);
    other = db.kind === "postgres" ? await backend.open() : undefined;
    for (const h of ["h1", "h2"]) {
      await upsertHost(db.sql, hostRegistration(h, { zone: "z1" }));
      await applyPoolReports(db.sql, h, [poolReport("p", 100n * GiB)]);
    }
    view = new LiveView(db, { pollMs: 20 });
    await view.ready();
  });
  afterAll(async () => {
    await view?.stop();
    await other?.close();
    await db?.close();
    await backend?.close();
  });
  const writer = () => (other ?? db).sql;

  it("shows its own in-flight placement to the next decision, and a rollback undoes it", () => {
    const first = view.place(req(), none, { hold: true });
    expect(first.decision.poolId).toBe("h1/p");
    expect(first.decision.candidates.map((c) => c.poolId)).toEqual(["h1/p", "h2/p"]);
    expect(view.poolView("h1/p")?.reservedBytes).toBe(10n * GiB);
    const second = view.place(req(), none, { hold: true });
    expect(second.decision.poolId).toBe("h2/p");
    view.release(first.hold!);
    view.release(second.hold!);
    expect(view.poolView("h1/p")?.reservedBytes).toBe(0n);
    expect(view.place(req(), none).decision.poolId).toBe("h1/p");
  });

  it("keeps an in-flight hold over a re-read of its pool, and drops a committed one once the re-read has it", async () => {
    const { hold } = view.place(req(), none, { hold: true });
    await view.reread(["h1/p"]);
    expect(view.poolView("h1/p")?.reservedBytes).toBe(10n * GiB);
    // The transaction: the ledger's reservation commits, then the hold is marked committed.
    await db.sql.begin(async (tx) => {
      await insertVolume(tx, newVolume("vol-live", "h1/p", 10n * GiB));
      expect(
        await reserveCapacity(tx, { poolId: "h1/p", volumeId: "vol-live", bytes: 10n * GiB, ttlMs: 60_000 }),
      ).toBe(true);
    });
    view.commit(hold!);
    await eventually(() => view.heldBytes("h1/p") === 0n, view);
    expect(view.poolView("h1/p")?.reservedBytes).toBe(10n * GiB);
    expect(view.poolView("h1/p")?.volumeCount).toBe(1);
  });

  it("follows another writer's change to a pool (the change feed)", async () => {
    await writer()`update pools set draining = true where id = 'h2/p'`;
    await eventually(() => view.poolView("h2/p")?.draining === true, view);
    const d = view.place(req(), none).decision;
    expect(d.refusals?.get("pool-healthy")).toBe(1);
    await writer()`update pools set draining = false where id = 'h2/p'`;
    await eventually(() => view.poolView("h2/p")?.draining === false, view);
  });

  it("follows a host going down, and a new pool (rebuilt)", async () => {
    await writer()`update hosts set state = 'down' where id = 'h1'`;
    await eventually(() => view.poolView("h1/p")?.hostUp === false, view);
    await writer()`update hosts set state = 'up' where id = 'h1'`;
    await upsertHost(writer(), hostRegistration("h3", { zone: "z2" }));
    await applyPoolReports(writer(), "h3", [poolReport("p", 500n * GiB)]);
    await eventually(
      () => view.poolView("h3/p") !== undefined && view.poolView("h1/p")?.hostUp === true,
      view,
    );
    expect(view.size).toBe(3);
    expect(view.place(req(), none).decision.poolId).toBe("h3/p");
  });

  it("re-reads only the pool involved after a ledger conflict", async () => {
    await view.sync();
    // Behind the view's back as far as it can tell: the pool fills up.
    await writer()`update pools set allocated_bytes = total_bytes where id = 'h3/p'`;
    const before = { ...view.stats };
    await view.reread(["h3/p"]);
    expect(view.poolView("h3/p")?.allocatedBytes).toBe((await getPool(db.sql, "h3/p"))!.totalBytes);
    // One re-read of one pool (the feed may have re-read it too, never more than that pool).
    expect(view.stats.loads).toBe(before.loads);
    expect(view.stats.poolsReread - before.poolsReread).toBeLessThanOrEqual(
      view.stats.rereads - before.rereads,
    );
    expect(view.stats.poolsReread - before.poolsReread).toBeGreaterThanOrEqual(1);
    expect(view.place(req(), none).decision.poolId).not.toBe("h3/p");
  });

  it("sees a host this controller registered itself as soon as refresh resolves, without waiting for the feed", async () => {
    await upsertHost(db.sql, hostRegistration("h4", { zone: "z3" }));
    await applyPoolReports(db.sql, "h4", [poolReport("p", 900n * GiB)]);
    await view.refresh(["h4"]);
    expect(view.poolView("h4/p")?.totalBytes).toBe(900n * GiB);
    expect(view.knowsHost("h4")).toBe(true);
    expect(view.place(req(), none).decision.poolId).toBe("h4/p");
  });

  it("reads a host the database has and the view has not seen into the view before a request naming it", async () => {
    await upsertHost(writer(), hostRegistration("h5", { zone: "z3" }));
    await applyPoolReports(writer(), "h5", [poolReport("p", 10n * GiB)]);
    await checkConstraintTargets(db.sql, req({ constraints: { hostId: "h5" } }), view);
    expect(view.knowsHost("h5")).toBe(true);
    expect(view.place(req({ constraints: { hostId: "h5" } }), none).decision.poolId).toBe("h5/p");
    await expect(
      checkConstraintTargets(db.sql, req({ constraints: { hostId: "h6" } }), view),
    ).rejects.toThrow(/host h6 not found/);
  });

  it("follows a shared pool's attachments written by another writer: a host attaching, going down, detaching", async () => {
    const share = "nfs://203.0.113.10/export/vms";
    const nfs = (name: string) =>
      poolReport(name, 300n * GiB, { kind: "netfs", formats: ["raw", "qcow2"], shared: true, share });
    const pinned = req({ constraints: { hostId: "h2", poolKinds: ["netfs"] } });
    await applyPoolReports(writer(), "h1", [poolReport("p", 100n * GiB), nfs("vms")]);
    await applyPoolReports(writer(), "h2", [poolReport("p", 100n * GiB), nfs("shared")]);
    await eventually(() => view.poolView("h1/vms")?.attached?.length === 1, view);
    const d = view.place(pinned, none).decision;
    expect([d.poolId, d.hostId]).toEqual(["h1/vms", "h2"]);
    expect(view.poolNameOn("h1/vms", "h2")).toBe("shared");
    expect(view.poolNameOn("h1/vms", "h1")).toBe("vms");
    // The attached host goes down: the shared pool is re-read with the host (it is not the pool's owner).
    await writer()`update hosts set state = 'down' where id = 'h2'`;
    await eventually(() => view.poolView("h1/vms")?.attached?.[0]?.hostUp === false, view);
    expect(view.place(pinned, none).decision.feasible).toBe(false);
    await writer()`update hosts set state = 'up' where id = 'h2'`;
    await eventually(() => view.poolView("h1/vms")?.attached?.[0]?.hostUp === true, view);
    // Detached: only the attachment row changes, and its trigger tells the view.
    await applyPoolReports(writer(), "h2", [poolReport("p", 100n * GiB)]);
    await eventually(() => view.poolView("h1/vms")?.attached === undefined, view);
    expect(view.place(pinned, none).decision.feasible).toBe(false);
    expect(view.poolNameOn("h1/vms", "h2")).toBeUndefined();
  });
});
