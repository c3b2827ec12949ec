import { StowageError } from "@stowage/core";
import { describe, expect, it } from "vitest";
import type { IscsiExport } from "./export.js";
import { type ApplyReport, keepExported, type TgtExporter } from "./exporter.js";

const report = (changed: boolean): ApplyReport => ({ changed, actions: [], exports: [], removed: [] });

/** An exporter whose apply fails while `down` is true (tgtd not running), counting the calls. */
function fakeExporter() {
  const state = { down: false, calls: 0, seen: [] as (readonly IscsiExport[])[] };
  const exporter: TgtExporter = {
    controlPort: 0,
    show: async () => ({ targets: [], accounts: [] }),
    apply: async (desired) => {
      state.calls++;
      state.seen.push(desired);
      if (state.down) throw new StowageError("unavailable", "tgtd is not running");
      return report(state.calls === 1);
    },
  };
  return { exporter, state };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("keepExported", () => {
  it("applies at once, then on the interval, with the desired state of the moment", async () => {
    const { exporter, state } = fakeExporter();
    let n = 0;
    const keeper = keepExported(exporter, () => [{ volumeId: `v${n++}` } as unknown as IscsiExport], {
      intervalMs: 30,
    });
    await sleep(300);
    await keeper.stop();
    expect(state.calls).toBeGreaterThanOrEqual(3);
    expect(state.seen[0]![0]!.volumeId).toBe("v0");
    expect(state.seen[1]![0]!.volumeId).toBe("v1");
    const after = state.calls;
    await sleep(100);
    expect(state.calls).toBe(after);
  });

  it("retries quickly while tgtd is down and recovers without a call", async () => {
    const { exporter, state } = fakeExporter();
    const errors: unknown[] = [];
    state.down = true;
    const keeper = keepExported(exporter, () => [], {
      intervalMs: 10_000,
      retryMs: 20,
      onError: (e) => errors.push(e),
    });
    await sleep(100);
    expect(errors.length).toBeGreaterThanOrEqual(2);
    expect(keeper.lastError).toBeInstanceOf(StowageError);
    state.down = false;
    await sleep(60);
    expect(keeper.lastError).toBeUndefined();
    expect(keeper.lastReport).toBeDefined();
    const calls = state.calls;
    await sleep(60);
    expect(state.calls).toBe(calls); // back on the long interval
    await keeper.stop();
  });

  it("survives throwing hooks and runs one apply at a time", async () => {
    const { exporter, state } = fakeExporter();
    const keeper = keepExported(exporter, () => [], {
      intervalMs: 10_000,
      onApply: () => {
        throw new Error("hook bug");
      },
    });
    const [a, b] = await Promise.all([keeper.applyNow(), keeper.applyNow()]);
    expect(a).toBe(b);
    expect(state.calls).toBe(1);
    await keeper.stop();
  });
});
