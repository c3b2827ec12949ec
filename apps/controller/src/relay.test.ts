import { getOperation, type OperationRow } from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ControllerContext } from "./context.js";
import { enqueueOperation } from "./outbox.js";
import { relayOnce } from "./relay.js";
import { addVolume, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";

describe("outbox relay (on PGlite, with a recording bus)", () => {
  let f: ServiceFixture;
  let ops: OperationRow[];
  const published: { subject: string; msgID: string }[] = [];
  let failAfter = Number.POSITIVE_INFINITY;

  const relayCtx = (): ControllerContext => ({
    ...f.ctx,
    bus: {
      js: {
        async publish(subject: string, _data: Uint8Array, opts: { msgID: string }) {
          if (published.length >= failAfter) throw new Error("broker unavailable");
          published.push({ subject, msgID: opts.msgID });
        },
      },
    } as unknown as ControllerContext["bus"],
  });

  beforeAll(async () => {
    f = await openServiceFixture();
    const pool = await f.addPool("files", "dir", ["raw"]);
    const v = await addVolume(f.sql, { name: "disk", poolId: pool, format: "raw" });
    ops = [];
    for (let i = 0; i < 3; i++) {
      ops.push(
        await enqueueOperation(f.sql, {
          kind: "delete_volume",
          volume: v,
          payload: { case: "deleteVolume", value: { volumeId: v.id } },
          actor: "test",
        }),
      );
    }
  });
  afterAll(async () => {
    await f?.close();
  });

  it("stops at the first publish that fails, leaving the rest pending for the next pass", async () => {
    failAfter = 1;
    expect(await relayOnce(relayCtx())).toBe(1);
    expect((await getOperation(f.sql, ops[0]!.id))?.state).toBe("sent");
    expect((await getOperation(f.sql, ops[1]!.id))?.state).toBe("pending");
  });

  it("publishes pending operations to their host's subject with the operation id as message id, then marks them sent", async () => {
    failAfter = Number.POSITIVE_INFINITY;
    expect(await relayOnce(relayCtx())).toBe(2);
    expect(published.map((p) => p.msgID)).toEqual(ops.map((o) => o.id));
    expect(new Set(published.map((p) => p.subject)).size).toBe(1);
    expect(published[0]!.subject).toMatch(/h1/);
    for (const o of ops) expect((await getOperation(f.sql, o.id))?.state).toBe("sent");
    // Nothing is left to send until the resend delay passes.
    expect(await relayOnce(relayCtx())).toBe(0);
  });
});
