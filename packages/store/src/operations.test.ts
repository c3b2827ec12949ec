import { beforeAll, describe, expect, it } from "vitest";
import type { Database } from "./db.js";
import { upsertHost } from "./hosts.js";
import {
  getOperation,
  getOperationsForUpdate,
  markOperationsSent,
  operationsToPublish,
} from "./operations.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import { hostRegistration, operationInState } from "./testing/fixtures.js";

describe.each(backends)("the outbox on %s", (_name, makeBackend) => {
  const database = migratedDatabase(makeBackend);
  let db: Database;
  const ids = ["op-a", "op-b", "op-c", "op-done"];

  beforeAll(async () => {
    db = database();
    await upsertHost(db.sql, hostRegistration("h1"));
    await operationInState(db.sql, "op-a", "h1/p", "pending", 30);
    await operationInState(db.sql, "op-b", "h1/p", "pending", 20);
    await operationInState(db.sql, "op-c", "h1/p", "pending", 10);
    await operationInState(db.sql, "op-done", "h1/p", "succeeded", 40);
  });

  it("lists pending operations oldest first, leaving out the ones to skip", async () => {
    expect((await operationsToPublish(db.sql, 60_000)).map((o) => o.id)).toEqual(["op-a", "op-b", "op-c"]);
    expect((await operationsToPublish(db.sql, 60_000, 100, ["op-b"])).map((o) => o.id)).toEqual([
      "op-a",
      "op-c",
    ]);
    expect((await operationsToPublish(db.sql, 60_000, 1)).map((o) => o.id)).toEqual(["op-a"]);
  });

  it("reads many operations at once, in id order, leaving out unknown ids", async () => {
    expect(await getOperationsForUpdate(db.sql, [])).toEqual([]);
    const rows = await db.sql.begin((tx) => getOperationsForUpdate(tx, ["op-c", "op-x", "op-a", "op-c"]));
    expect(rows.map((r) => r.id)).toEqual(["op-a", "op-c"]);
  });

  it("marks many operations sent in one statement, and leaves a finished one as it is", async () => {
    expect(await markOperationsSent(db.sql, [])).toBe(0);
    expect(await markOperationsSent(db.sql, ids)).toBe(3);
    const rows = await Promise.all(ids.map((id) => getOperation(db.sql, id)));
    expect(rows.map((r) => r?.state)).toEqual(["sent", "sent", "sent", "succeeded"]);
    expect(rows.slice(0, 3).map((r) => r?.attempts)).toEqual([1, 1, 1]);
    // One statement: one now() for every row it marked.
    expect(new Set(rows.slice(0, 3).map((r) => r?.sentAt?.getTime())).size).toBe(1);
    expect(await operationsToPublish(db.sql, 60_000)).toEqual([]);
  });
});
