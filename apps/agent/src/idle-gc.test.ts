import { setTimeout as delay } from "node:timers/promises";
import { describe, expect, it } from "vitest";
import { startIdleCollector } from "./idle-gc.js";

describe("the idle collector", () => {
  it("collects once after an idle spell, never while work runs or goes on, and not again without new work", async () => {
    let collections = 0;
    let running = 0;
    const c = startIdleCollector({ idleMs: 200, busy: () => running, collect: () => collections++ });
    try {
      await delay(500);
      expect(collections).toBe(0); // nothing happened yet
      for (let i = 0; i < 6; i++) {
        c.note();
        await delay(60);
      }
      expect(collections).toBe(0); // work kept coming
      running = 1;
      await delay(500);
      expect(collections).toBe(0); // an operation still runs
      running = 0;
      await expect.poll(() => collections, { timeout: 2_000 }).toBe(1);
      await delay(600);
      expect(collections).toBe(1);
      c.note();
      await expect.poll(() => collections, { timeout: 2_000 }).toBe(2);
    } finally {
      c.stop();
    }
  });

  it("does nothing without node's --expose-gc", () => {
    const had = (globalThis as { gc?: unknown }).gc;
    delete (globalThis as { gc?: unknown }).gc;
    try {
      const c = startIdleCollector({ idleMs: 100, busy: () => 0 });
      c.note();
      c.stop();
    } finally {
      if (had) (globalThis as { gc?: unknown }).gc = had;
    }
  });
});
