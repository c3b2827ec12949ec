import { describe, expect, it } from "vitest";
import { createGrowthForecast, growthRate, secondsToFull, type UsageSample } from "./forecast.js";

const GiB = 2 ** 30;
const T0 = Date.UTC(2025, 0, 1);

/** Samples every `stepS` seconds along used = base + rate × t, plus an optional deterministic wobble. */
function line(n: number, stepS: number, base: number, rate: number, wobble = 0): UsageSample[] {
  return Array.from({ length: n }, (_, i) => ({
    at: T0 + i * stepS * 1000,
    usedBytes: base + rate * i * stepS + (i % 2 === 0 ? wobble : -wobble),
  }));
}

describe("growthRate", () => {
  it("recovers the slope of a straight line in bytes per second", () => {
    expect(growthRate(line(10, 60, 100 * GiB, 1000))).toBeCloseTo(1000, 6);
  });

  it("fits through noise: alternating ±1 GiB around 5 MiB/s growth", () => {
    const rate = growthRate(line(100, 30, 10 * GiB, 5 * 2 ** 20, GiB))!;
    expect(rate / (5 * 2 ** 20)).toBeGreaterThan(0.95);
    expect(rate / (5 * 2 ** 20)).toBeLessThan(1.05);
  });

  it("is negative when use shrinks and zero when flat", () => {
    expect(growthRate(line(5, 10, GiB, -100))).toBeCloseTo(-100, 6);
    expect(growthRate(line(5, 10, GiB, 0))).toBe(0);
  });

  it("is undefined without two distinct times", () => {
    expect(growthRate([])).toBeUndefined();
    expect(growthRate([{ at: T0, usedBytes: 1 }])).toBeUndefined();
    expect(
      growthRate([
        { at: T0, usedBytes: 1 },
        { at: T0, usedBytes: 2 },
      ]),
    ).toBeUndefined();
  });

  it("keeps its precision with epoch-millisecond times and tebibyte values", () => {
    const samples = line(1000, 5, 900 * 1024 * GiB, 3, 0);
    expect(growthRate(samples)).toBeCloseTo(3, 3);
  });
});

describe("secondsToFull", () => {
  it("divides the free bytes by the growth rate", () => {
    expect(secondsToFull(60 * GiB, 100 * GiB, GiB / 3600)).toBeCloseTo(40 * 3600, 6);
  });
  it("is +Inf when not growing and 0 when already full", () => {
    expect(secondsToFull(10, 100, 0)).toBe(Number.POSITIVE_INFINITY);
    expect(secondsToFull(10, 100, -5)).toBe(Number.POSITIVE_INFINITY);
    expect(secondsToFull(100, 100, 5)).toBe(0);
    expect(secondsToFull(120, 100, -5)).toBe(0);
  });
});

describe("createGrowthForecast", () => {
  const feed = (
    f: ReturnType<typeof createGrowthForecast>,
    key: string,
    samples: UsageSample[],
    cap: number,
  ) => {
    for (const s of samples) f.record(key, s.at, s.usedBytes, cap);
  };

  it("forecasts a thin pool growing 1 GiB an hour with 50 GiB free as 50 hours", () => {
    const f = createGrowthForecast();
    feed(f, "node1/thin", line(61, 60, 50 * GiB, GiB / 3600), 101 * GiB);
    // The last sample is at 1 h: 51 GiB used, 50 GiB free.
    expect(f.timeToFull("node1/thin")! / 3600).toBeCloseTo(50, 6);
  });

  it("says +Inf for a flat or shrinking pool, 0 for a full one", () => {
    const f = createGrowthForecast();
    feed(f, "flat", line(10, 10, 5 * GiB, 0), 10 * GiB);
    feed(f, "shrinking", line(10, 10, 5 * GiB, -1000), 10 * GiB);
    feed(f, "full", line(10, 10, 10 * GiB, 1000), 10 * GiB);
    expect(f.timeToFull("flat")).toBe(Number.POSITIVE_INFINITY);
    expect(f.timeToFull("shrinking")).toBe(Number.POSITIVE_INFINITY);
    expect(f.timeToFull("full")).toBe(0);
  });

  it("gives no forecast until the history has enough samples over enough time", () => {
    const f = createGrowthForecast({ minSpanSeconds: 30, minSamples: 3 });
    f.record("p", T0, 1 * GiB, 10 * GiB);
    f.record("p", T0 + 20_000, 2 * GiB, 10 * GiB);
    expect(f.timeToFull("p")).toBeUndefined(); // two samples
    f.record("p", T0 + 25_000, 2.25 * GiB, 10 * GiB);
    expect(f.timeToFull("p")).toBeUndefined(); // 25 s of history
    f.record("p", T0 + 30_000, 2.5 * GiB, 10 * GiB);
    // 0.05 GiB/s, 7.5 GiB free.
    expect(f.timeToFull("p")).toBeCloseTo(150, 6);
    expect(f.timeToFull("unknown")).toBeUndefined();
  });

  it("gives no forecast for a pool that reports no capacity", () => {
    const f = createGrowthForecast();
    feed(f, "p", line(10, 10, 0, 1000), 0);
    expect(f.timeToFull("p")).toBeUndefined();
  });

  it("ignores a sample that is not newer than the last one (the same report seen twice)", () => {
    const f = createGrowthForecast();
    feed(f, "p", line(5, 10, GiB, 100), 10 * GiB);
    f.record("p", T0 + 40_000, 9 * GiB, 10 * GiB);
    f.record("p", T0, 9 * GiB, 10 * GiB);
    expect(f.samples("p")).toHaveLength(5);
    expect(f.samples("p").at(-1)?.usedBytes).toBe(GiB + 4000);
  });

  it("forgets samples older than the window, so old growth stops counting", () => {
    const f = createGrowthForecast({ windowSeconds: 600 });
    // Ten minutes of fast growth, then an hour flat: the forecast follows the flat part.
    feed(f, "p", line(11, 60, 0, 10 * 2 ** 20), 1024 * GiB);
    const after = f.samples("p").at(-1)!;
    for (let i = 1; i <= 60; i++) f.record("p", after.at + i * 60_000, after.usedBytes, 1024 * GiB);
    expect(f.samples("p")[0]!.at).toBeGreaterThanOrEqual(after.at + 3000_000);
    expect(f.timeToFull("p")).toBe(Number.POSITIVE_INFINITY);
  });

  it("bounds its memory by thinning the older half, keeping the oldest and the newest samples", () => {
    const f = createGrowthForecast({ maxSamples: 50, windowSeconds: 24 * 3600 });
    const samples = line(1000, 10, GiB, 2000);
    feed(f, "p", samples, 1024 * GiB);
    const kept = f.samples("p");
    expect(kept.length).toBeLessThanOrEqual(50);
    expect(kept[0]).toEqual(samples[0]);
    expect(kept.at(-1)).toEqual(samples.at(-1));
    // A straight line stays a straight line after thinning.
    expect(growthRate(kept)).toBeCloseTo(2000, 6);
  });

  it("drops the pools it is told to keep no longer", () => {
    const f = createGrowthForecast();
    feed(f, "a", line(5, 10, GiB, 100), 10 * GiB);
    feed(f, "b", line(5, 10, GiB, 100), 10 * GiB);
    f.retain(["b"]);
    expect(f.samples("a")).toHaveLength(0);
    expect(f.samples("b")).toHaveLength(5);
  });
});
