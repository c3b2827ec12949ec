import { setTimeout as delay } from "node:timers/promises";
import type { HandlerContext } from "@connectrpc/connect";
import { listVolumes, type VolumeRow, volumesChangedAfter } from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GiB, openServiceFixture, type ServiceFixture } from "../testing/service-fixture.js";
import { watchChanges } from "./watch.js";

describe("watchChanges (on PGlite)", () => {
  let f: ServiceFixture;
  let pool: string;
  let n = 0;
  const add = async () => {
    const id = `vol-r${(++n).toString(16).padStart(31, "0")}`;
    await f.sql`insert into volumes (id, name, size_bytes, format, pool_id, host_id, state)
      values (${id}, ${id}, ${GiB}, 'raw', ${pool}, 'h1', 'creating')`;
    return id;
  };

  beforeAll(async () => {
    f = await openServiceFixture();
    pool = await f.addPool("p", "dir", ["raw"]);
    // Watchers poll every 20 ms here, instead of waiting for a notification.
    f.ctx.waitForChange = () => delay(20);
  });
  afterAll(() => f?.close());

  it("yields what exists first, then every change once, in commit order, and keeps no per-row state", async () => {
    const before = [await add(), await add()];
    const abort = new AbortController();
    const events: [string, boolean][] = [];
    const stream = watchChanges<VolumeRow, [string, boolean]>(
      f.ctx,
      { signal: abort.signal } as HandlerContext,
      {
        start: (sql) => listVolumes(sql, { limit: 1000 }),
        changedAfter: (s) => volumesChangedAfter(f.sql, s, {}),
        toMessage: (v, first) => [v.id, first],
      },
    );
    const consumed = (async () => {
      for await (const e of stream) events.push(e);
    })();
    await expect.poll(() => events.length).toBe(2);
    const made: string[] = [];
    for (let i = 0; i < 20; i++) {
      made.push(await add());
      if (i % 5 === 0) await delay(30);
    }
    await f.sql`update volumes set state = 'available' where id = ${before[0]!}`;
    await expect.poll(() => events.length, { timeout: 5_000 }).toBe(2 + 20 + 1);
    await delay(200);
    abort.abort();
    await consumed;
    expect(events).toEqual([
      ...before.map((id) => [id, true]),
      ...made.map((id) => [id, false]),
      [before[0]!, false],
    ]);
  });
});
