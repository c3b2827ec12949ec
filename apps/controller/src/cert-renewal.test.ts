import { afterEach, describe, expect, it, vi } from "vitest";
import { keepServerCertFresh } from "./controller.js";

afterEach(() => {
  vi.useRealTimers();
});

describe("keepServerCertFresh", () => {
  it("swaps in a certificate only when a check finds a new one, and keeps checking after a failure", async () => {
    vi.useFakeTimers();
    const answers: (string | Error)[] = ["old", new Error("disk full"), "new", "new"];
    const load = vi.fn(async () => {
      const a = answers.shift() ?? "new";
      if (a instanceof Error) throw a;
      return { certPem: a, keyPem: `key-${a}` };
    });
    const swap = vi.fn();
    const warn = vi.fn();
    const stop = keepServerCertFresh("old", load, swap, { warn }, 1000);
    for (let i = 0; i < 4; i++) await vi.advanceTimersByTimeAsync(1000);
    expect(load).toHaveBeenCalledTimes(4);
    expect(warn).toHaveBeenCalledTimes(1);
    expect(swap.mock.calls).toEqual([[{ certPem: "new", keyPem: "key-new" }]]);
    stop();
    await vi.advanceTimersByTimeAsync(5000);
    expect(load).toHaveBeenCalledTimes(4);
  });
});
