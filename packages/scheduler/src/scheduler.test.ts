import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { placeVolume, Scheduler } from "./scheduler.js";
import type { ClusterView, PlacementRequest, PoolCandidate } from "./types.js";

const GiB = 1024n ** 3n;

function pool(over: Partial<PoolCandidate> & { id: string }): PoolCandidate {
  return {
    hostId: over.id.split("/")[0]!,
    kind: "dir",
    zone: "",
    numaNode: null,
    labels: {},
    formats: ["qcow2", "raw"],
    healthy: true,
    draining: false,
    hostUp: true,
    hostSchedulable: true,
    totalBytes: 100n * GiB,
    usedBytes: 0n,
    freeBytes: 100n * GiB,
    allocatedBytes: 0n,
    reservedBytes: 0n,
    overcommitRatio: 1,
    maxUsedPercent: 90,
    volumeCount: 0,
    ...over,
  };
}

const view = (pools: PoolCandidate[], extra: Partial<ClusterView> = {}): ClusterView => ({
  pools,
  numa: new Map(),
  groups: new Map(),
  ...extra,
});
const req = (over: Partial<PlacementRequest> = {}): PlacementRequest => ({
  name: "v",
  sizeBytes: 10n * GiB,
  format: "qcow2",
  constraints: {},
  ...over,
});

describe("placeVolume", () => {
  it("spreads to the pool with the most room and explains every candidate", () => {
    const d = placeVolume(view([pool({ id: "a/p", allocatedBytes: 50n * GiB }), pool({ id: "b/p" })]), req());
    expect(d.feasible).toBe(true);
    expect(d.poolId).toBe("b/p");
    expect(d.candidates.map((c) => c.poolId)).toEqual(["b/p", "a/p"]);
    expect(d.candidates[0]!.scores.map((s) => s.scorer)).toContain("free-space");
  });

  it("bin-packs into the fullest pool that still fits", () => {
    const d = placeVolume(
      view([pool({ id: "a/p", allocatedBytes: 50n * GiB }), pool({ id: "b/p" })]),
      req({ constraints: { strategy: "binpack" } }),
    );
    expect(d.poolId).toBe("a/p");
  });

  it("refuses with the filter and a reason", () => {
    const d = placeVolume(
      view([
        pool({ id: "a/p", hostUp: false }),
        pool({ id: "b/p", healthy: false }),
        pool({ id: "c/p", allocatedBytes: 95n * GiB }),
        pool({ id: "d/p", kind: "rbd", formats: ["raw"] }),
        pool({ id: "e/p", draining: true }),
        pool({ id: "f/p", hostSchedulable: false }),
      ]),
      req(),
    );
    expect(d.feasible).toBe(false);
    const by = Object.fromEntries(d.candidates.map((c) => [c.poolId, c.refusedBy]));
    expect(by).toEqual({
      "a/p": "host-up",
      "b/p": "pool-healthy",
      "c/p": "capacity",
      "d/p": "pool-kind",
      "e/p": "pool-healthy",
      "f/p": "host-up",
    });
    expect(d.candidates.find((c) => c.poolId === "c/p")!.reason).toMatch(/needs 10 GiB, 5 GiB left/);
    expect(d.summary).toMatch(/no pool can take 10 GiB qcow2: 6 refused/);
  });

  it("honours pool, host, zone and label selectors", () => {
    const pools = [pool({ id: "a/p", zone: "z1", labels: { tier: "ssd" } }), pool({ id: "b/p", zone: "z2" })];
    expect(placeVolume(view(pools), req({ constraints: { poolId: "b/p" } })).poolId).toBe("b/p");
    expect(placeVolume(view(pools), req({ constraints: { hostId: "a" } })).poolId).toBe("a/p");
    expect(placeVolume(view(pools), req({ constraints: { zone: "z2" } })).poolId).toBe("b/p");
    expect(placeVolume(view(pools), req({ constraints: { poolLabels: { tier: "ssd" } } })).poolId).toBe(
      "a/p",
    );
  });

  it("prefers the VM's NUMA node and returns its CPU set; requires it when asked", () => {
    const pools = [
      pool({ id: "h/n0", numaNode: 0 }),
      pool({ id: "h/n1", numaNode: 1, allocatedBytes: 40n * GiB }),
      pool({ id: "x/p" }),
    ];
    const numa = new Map([
      [
        "h",
        [
          { id: 0, cpuList: "0-3" },
          { id: 1, cpuList: "4-7" },
        ],
      ],
    ]);
    const d = placeVolume(
      view(pools, { numa }),
      req({ constraints: { numa: { hostId: "h", node: 1, required: false } } }),
    );
    expect(d.poolId).toBe("h/n1");
    expect(d.numaNode).toBe(1);
    expect(d.cpuSet).toBe("4-7");
    const full = pools.map((p) => (p.id === "h/n1" ? { ...p, allocatedBytes: 95n * GiB } : p));
    const r = placeVolume(
      view(full, { numa }),
      req({ constraints: { numa: { hostId: "h", node: 1, required: true } } }),
    );
    expect(r.feasible).toBe(false);
    expect(r.candidates.find((c) => c.poolId === "h/n0")!.refusedBy).toBe("numa");
  });

  it("keeps an anti-affinity group on distinct hosts or zones", () => {
    const pools = [
      pool({ id: "a/p", zone: "z1" }),
      pool({ id: "b/p", zone: "z1" }),
      pool({ id: "c/p", zone: "z2" }),
    ];
    const groups = new Map([["db", [{ hostId: "a", zone: "z1" }]]]);
    const host = placeVolume(view(pools, { groups }), req({ constraints: { antiAffinityGroup: "db" } }));
    expect(host.candidates.find((c) => c.poolId === "a/p")!.refusedBy).toBe("anti-affinity");
    const zone = placeVolume(
      view(pools, { groups }),
      req({ constraints: { antiAffinityGroup: "db", antiAffinityScope: "zone" } }),
    );
    expect(zone.poolId).toBe("c/p");
  });

  it("breaks ties by pool id", () => {
    const d = placeVolume(view([pool({ id: "b/p" }), pool({ id: "a/p" })]), req());
    expect(d.poolId).toBe("a/p");
  });
});

describe("capacity", () => {
  const reason = (p: PoolCandidate, size: bigint) =>
    placeVolume(view([p]), req({ sizeBytes: size, format: "raw" })).candidates[0]!;
  it("lets thin pools overcommit up to the ratio, while physical use stays under the floor", () => {
    const thin = pool({
      id: "t/p",
      kind: "lvmthin",
      formats: ["raw"],
      overcommitRatio: 20,
      freeBytes: 1n * GiB,
    });
    expect(reason(thin, 2000n * GiB).feasible).toBe(true);
    expect(reason(thin, 2001n * GiB).reason).toMatch(/needs 1.95 TiB|needs 2001 GiB|needs 2 TiB/);
    expect(reason({ ...thin, usedBytes: 95n * GiB }, GiB).reason).toMatch(
      /physical use 95% is over the pool's 90% floor/,
    );
  });
  it("bounds thick pools by free physical bytes net of reservations", () => {
    const thick = pool({
      id: "l/p",
      kind: "lvm",
      formats: ["raw"],
      freeBytes: 20n * GiB,
      reservedBytes: 15n * GiB,
    });
    expect(reason(thick, 10n * GiB).reason).toMatch(/needs 10 GiB, 5 GiB left/);
  });
  it("keeps the reserved percentage out of reach", () => {
    const p = pool({ id: "r/p", reservedPercent: 10 });
    expect(reason(p, 90n * GiB).feasible).toBe(true);
    expect(reason(p, 91n * GiB).refusedBy).toBe("capacity");
  });
  it("refuses a pool at its volume limit", () => {
    const p = pool({ id: "m/p", maxVolumes: 3, volumeCount: 3 });
    const v = reason(p, GiB);
    expect(v.refusedBy).toBe("max-volumes");
    expect(v.reason).toBe("pool holds 3 volumes, its limit is 3");
  });
});

describe("scorers", () => {
  it("prefer pools with less work in flight", () => {
    const d = placeVolume(view([pool({ id: "a/p", load: 5 }), pool({ id: "b/p", load: 0 })]), req());
    expect(d.poolId).toBe("b/p");
    expect(d.candidates[0]!.scores.find((s) => s.scorer === "pool-load")!.value).toBe(1);
  });
  it("prefer pools with fewer volumes when space is equal", () => {
    const d = placeVolume(
      view([pool({ id: "a/p", volumeCount: 4 }), pool({ id: "b/p", volumeCount: 1 })]),
      req(),
    );
    expect(d.poolId).toBe("b/p");
  });
  it("take their weights from the options", () => {
    const pools = [pool({ id: "a/p", load: 5 }), pool({ id: "b/p", allocatedBytes: 60n * GiB })];
    expect(placeVolume(view(pools), req(), { weights: { "pool-load": 0 } }).poolId).toBe("a/p");
    expect(placeVolume(view(pools), req(), { weights: { "free-space": 0, "pool-load": 5 } }).poolId).toBe(
      "b/p",
    );
  });
});

describe("group placement", () => {
  it("places all disks of a VM on its NUMA node, or none", () => {
    const pools = [
      pool({ id: "h/n0", numaNode: 0, totalBytes: 30n * GiB, freeBytes: 30n * GiB }),
      pool({ id: "h/n1", numaNode: 1 }),
    ];
    const s = new Scheduler(view(pools));
    const numa = { hostId: "h", node: 0, required: true };
    const ok = s.placeGroup([
      req({ name: "root", sizeBytes: 10n * GiB, constraints: { numa } }),
      req({ name: "data", sizeBytes: 15n * GiB, constraints: { numa } }),
    ]);
    expect(ok.feasible).toBe(true);
    expect(ok.decisions.map((d) => d.poolId)).toEqual(["h/n0", "h/n0"]);
    const tooBig = s.placeGroup([
      req({ name: "root", sizeBytes: 10n * GiB, constraints: { numa } }),
      req({ name: "data", sizeBytes: 25n * GiB, constraints: { numa } }),
    ]);
    expect(tooBig.feasible).toBe(false);
    expect(tooBig.summary).toMatch(/root: no pool can take 10 GiB/);
    // Nothing stays reserved in the view after a group placement.
    expect(s.place(req({ sizeBytes: 30n * GiB, constraints: { numa } })).feasible).toBe(true);
  });
  it("spreads a group with anti-affinity over distinct hosts", () => {
    const s = new Scheduler(view([pool({ id: "a/p" }), pool({ id: "b/p" }), pool({ id: "c/p" })]));
    const g = s.placeGroup(
      [1, 2, 3].map((k) => req({ name: `d${k}`, constraints: { antiAffinityGroup: "db" } })),
    );
    expect(new Set(g.decisions.map((d) => d.hostId)).size).toBe(3);
    expect(
      s.placeGroup([1, 2, 3, 4].map((k) => req({ name: `d${k}`, constraints: { antiAffinityGroup: "db" } })))
        .feasible,
    ).toBe(false);
  });
});

const arbPool = fc.record({
  i: fc.integer({ min: 0, max: 9 }),
  kind: fc.constantFrom("dir", "lvm", "lvmthin", "rbd") as fc.Arbitrary<PoolCandidate["kind"]>,
  total: fc.bigInt({ min: 0n, max: 1000n }),
  allocated: fc.bigInt({ min: 0n, max: 2000n }),
  reserved: fc.bigInt({ min: 0n, max: 500n }),
  ratio: fc.constantFrom(1, 1.5, 20),
  hostUp: fc.boolean(),
  healthy: fc.boolean(),
});

describe("properties", () => {
  it("never places beyond a pool's limit, explains every refusal, and is deterministic", () => {
    fc.assert(
      fc.property(
        fc.array(arbPool, { minLength: 1, maxLength: 12 }),
        fc.bigInt({ min: 1n, max: 600n }),
        (specs, size) => {
          const pools = specs.map((s, n) =>
            pool({
              id: `h${s.i}/p${n}`,
              kind: s.kind,
              formats: ["raw", "qcow2"],
              totalBytes: s.total * GiB,
              freeBytes: s.total * GiB,
              allocatedBytes: s.allocated * GiB,
              reservedBytes: s.reserved * GiB,
              overcommitRatio: s.ratio,
              hostUp: s.hostUp,
              healthy: s.healthy,
            }),
          );
          const r = req({ sizeBytes: size * GiB, format: "raw" });
          const d = placeVolume(view(pools), r);
          expect(placeVolume(view(pools), r)).toEqual(d);
          expect(d.candidates).toHaveLength(pools.length);
          for (const c of d.candidates) if (!c.feasible) expect(c.reason.length).toBeGreaterThan(0);
          if (d.feasible) {
            const p = pools.find((x) => x.id === d.poolId)!;
            const limit = (p.totalBytes * BigInt(Math.round(p.overcommitRatio * 1e6))) / 1_000_000n;
            expect(p.allocatedBytes + p.reservedBytes + r.sizeBytes <= limit).toBe(true);
            expect(p.hostUp && p.healthy).toBe(true);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("filling a cluster one volume at a time never oversubscribes any pool", () => {
    fc.assert(
      fc.property(
        fc.array(fc.bigInt({ min: 1n, max: 200n }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.bigInt({ min: 1n, max: 50n }), { maxLength: 80 }),
        (totals, sizes) => {
          const pools = totals.map((t, n) =>
            pool({ id: `h${n}/p`, totalBytes: t * GiB, freeBytes: t * GiB }),
          );
          for (const s of sizes) {
            const d = placeVolume(view(pools), req({ sizeBytes: s * GiB }));
            if (!d.feasible) continue;
            const p = pools.find((x) => x.id === d.poolId)!;
            p.reservedBytes += s * GiB;
          }
          for (const p of pools) expect(p.allocatedBytes + p.reservedBytes <= p.totalBytes).toBe(true);
        },
      ),
      { numRuns: 500 },
    );
  });
});
