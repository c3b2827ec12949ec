/** One observation of a pool's physical use. */
export interface UsageSample {
  /** Milliseconds since the epoch. */
  at: number;
  usedBytes: number;
}

/**
 * Least-squares slope of used bytes over time, in bytes per second. Undefined with fewer than two samples or
 * when every sample has the same time.
 */
export function growthRate(samples: readonly UsageSample[]): number | undefined {
  const n = samples.length;
  if (n < 2) return undefined;
  // Centre both axes so that large epoch times and byte counts do not cost precision.
  const t0 = samples[0]!.at;
  let meanT = 0;
  let meanU = 0;
  for (const s of samples) {
    meanT += (s.at - t0) / 1000;
    meanU += s.usedBytes;
  }
  meanT /= n;
  meanU /= n;
  let sxy = 0;
  let sxx = 0;
  for (const s of samples) {
    const dt = (s.at - t0) / 1000 - meanT;
    sxy += dt * (s.usedBytes - meanU);
    sxx += dt * dt;
  }
  return sxx > 0 ? sxy / sxx : undefined;
}

/**
 * Seconds until `usedBytes` reaches `capacityBytes` growing at `bytesPerSecond`: 0 when already full, +Inf when
 * not growing.
 */
export function secondsToFull(usedBytes: number, capacityBytes: number, bytesPerSecond: number): number {
  if (usedBytes >= capacityBytes) return 0;
  if (!(bytesPerSecond > 0)) return Number.POSITIVE_INFINITY;
  return (capacityBytes - usedBytes) / bytesPerSecond;
}

export interface GrowthForecastOptions {
  /** History kept per key; the slope is fitted over it. Default 6 h. */
  windowSeconds?: number;
  /** No forecast until the history spans this long. Default 30 s. */
  minSpanSeconds?: number;
  /** No forecast with fewer samples. Default 3. */
  minSamples?: number;
  /**
   * Memory bound per key. When reached, every other sample of the older half is dropped, so recent history stays
   * dense and older history sparse (the fit then leans on recent growth). Default 240.
   */
  maxSamples?: number;
}

export interface GrowthForecast {
  /** Adds a sample; one that is not newer than the key's last sample is ignored (the same report seen twice). */
  record(key: string, at: number, usedBytes: number, capacityBytes: number): void;
  /**
   * Seconds from the last sample until the key is full at the fitted growth rate: 0 when full, +Inf when not
   * growing, undefined while the history is too short to tell or the capacity is unknown (0).
   */
  timeToFull(key: string): number | undefined;
  /** Forgets every key not in `keys` (pools that went away). */
  retain(keys: Iterable<string>): void;
  /** The samples held for a key, oldest first (for tests and debugging). */
  samples(key: string): readonly UsageSample[];
}

/** A time-to-full forecast per key (pool) from a small in-memory history of its physical use. */
export function createGrowthForecast(opts: GrowthForecastOptions = {}): GrowthForecast {
  const windowMs = (opts.windowSeconds ?? 6 * 3600) * 1000;
  const minSpanMs = (opts.minSpanSeconds ?? 30) * 1000;
  const minSamples = Math.max(2, opts.minSamples ?? 3);
  const maxSamples = Math.max(4, opts.maxSamples ?? 240);
  const history = new Map<string, { samples: UsageSample[]; capacityBytes: number }>();

  return {
    record(key, at, usedBytes, capacityBytes) {
      let h = history.get(key);
      if (!h) {
        h = { samples: [], capacityBytes };
        history.set(key, h);
      }
      const last = h.samples.at(-1);
      if (last && at <= last.at) return;
      h.samples.push({ at, usedBytes });
      h.capacityBytes = capacityBytes;
      const oldest = at - windowMs;
      let drop = 0;
      while (drop < h.samples.length && h.samples[drop]!.at < oldest) drop++;
      if (drop) h.samples.splice(0, drop);
      if (h.samples.length > maxSamples) {
        const half = Math.floor(h.samples.length / 2);
        h.samples = [...h.samples.slice(0, half).filter((_, i) => i % 2 === 0), ...h.samples.slice(half)];
      }
    },
    timeToFull(key) {
      const h = history.get(key);
      // A pool that reports no capacity (unhealthy, not scanned yet) has no meaningful forecast.
      if (!h || h.capacityBytes <= 0 || h.samples.length < minSamples) return undefined;
      const first = h.samples[0]!;
      const last = h.samples.at(-1)!;
      if (last.at - first.at < minSpanMs) return undefined;
      const rate = growthRate(h.samples);
      if (rate === undefined) return undefined;
      return secondsToFull(last.usedBytes, h.capacityBytes, rate);
    },
    retain(keys) {
      const keep = new Set(keys);
      for (const k of history.keys()) if (!keep.has(k)) history.delete(k);
    },
    samples(key) {
      return history.get(key)?.samples ?? [];
    },
  };
}
