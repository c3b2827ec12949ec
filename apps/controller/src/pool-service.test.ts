import { recentAudit } from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describePool, listPoolsPage, setPoolDraining } from "./pool-service.js";
import { countRows, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";

describe("pool service (on PGlite)", () => {
  let f: ServiceFixture;
  beforeAll(async () => {
    f = await openServiceFixture();
    await f.addPool("a", "dir", ["raw"]);
    await f.addPool("b", "lvm", ["raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  it("lists a page of pools, each with its host's zone", async () => {
    const page = await listPoolsPage(f.ctx, { hostId: "", after: "", limit: 1 });
    expect(page.map((p) => [p.pool.id, p.zone])).toEqual([["h1/a", "z1"]]);
    const next = await listPoolsPage(f.ctx, { hostId: "", after: "h1/a", limit: 10 });
    expect(next.map((p) => p.pool.id)).toEqual(["h1/b"]);
    expect((await describePool(f.ctx, "h1/b")).zone).toBe("z1");
  });

  it("drains a pool and audits it in the same transaction", async () => {
    const p = await setPoolDraining(f.ctx, { poolId: "h1/a", draining: true, reason: "retiring" }, "bob");
    expect(p.draining).toBe(true);
    const [entry] = await recentAudit(f.sql, 1);
    expect(entry).toMatchObject({ actor: "bob", action: "SetPoolDraining", target: "h1/a", outcome: "ok" });
  });

  it("answers NOT_FOUND for an unknown pool and audits nothing", async () => {
    const audits = await countRows(f.sql, "audit_log");
    await expect(
      setPoolDraining(f.ctx, { poolId: "h1/zz", draining: true, reason: "" }, "bob"),
    ).rejects.toMatchObject({ code: "not_found" });
    expect(await countRows(f.sql, "audit_log")).toBe(audits);
  });
});
