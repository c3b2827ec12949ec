import { recentAudit } from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describeHost, setHostSchedulable } from "./host-service.js";
import { countRows, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";

describe("host service (on PGlite)", () => {
  let f: ServiceFixture;
  beforeAll(async () => {
    f = await openServiceFixture();
  });
  afterAll(async () => {
    await f?.close();
  });

  it("cordons a host with its reason and audits it in the same transaction", async () => {
    const h = await setHostSchedulable(
      f.ctx,
      { hostId: "h1", schedulable: false, reason: "disk swap" },
      "alice",
    );
    expect(h).toMatchObject({ schedulable: false, cordonReason: "disk swap" });
    expect((await describeHost(f.ctx, "h1")).host.schedulable).toBe(false);
    const [entry] = await recentAudit(f.sql, 1);
    expect(entry).toMatchObject({
      actor: "alice",
      action: "SetHostSchedulable",
      target: "h1",
      outcome: "ok",
    });
  });

  it("makes it schedulable again, forgetting the reason", async () => {
    const h = await setHostSchedulable(f.ctx, { hostId: "h1", schedulable: true, reason: "" }, "alice");
    expect(h).toMatchObject({ schedulable: true, cordonReason: "" });
  });

  it("answers NOT_FOUND for an unknown host and audits nothing", async () => {
    const audits = await countRows(f.sql, "audit_log");
    await expect(
      setHostSchedulable(f.ctx, { hostId: "nope", schedulable: false, reason: "" }, "alice"),
    ).rejects.toMatchObject({ code: "not_found" });
    await expect(describeHost(f.ctx, "nope")).rejects.toMatchObject({ code: "not_found" });
    expect(await countRows(f.sql, "audit_log")).toBe(audits);
  });
});
