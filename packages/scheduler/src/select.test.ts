import type { PoolKind, VolumeFormat } from "@stowage/core";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { Columns } from "./columns.js";
import { FILTER_TABLE } from "./filters.js";
import { compileRequest } from "./request.js";
import { SCORERS, Scheduler } from "./scheduler.js";
import type { ClusterView, PlacementDecision, PlacementRequest, PoolCandidate } from "./types.js";

const GiB = 1024n ** 3n;
const KINDS: PoolKind[] = ["dir", "lvm", "lvmthin", "netfs", "rbd"];
const FORMATS: VolumeFormat[] = ["raw", "qcow2"];
const HOSTS = ["h0", "h1", "h2", "h3", "h4"];
const ZONES = ["", "z1", "z2"];

/** Mostly `usual`, now and then not. */
const mostly = (usual: boolean) =>
  fc.oneof({ arbitrary: fc.constant(usual), weight: 9 }, { arbitrary: fc.constant(!usual), weight: 1 });

/** Small value ranges on purpose: equal scores (ties) and every filter's edge come up often. */
const arbPool = fc.record({
  host: fc.constantFrom(...HOSTS),
  kind: fc.constantFrom(...KINDS),
  formats: fc.subarray(FORMATS, { minLength: 1 }),
  zone: fc.constantFrom(...ZONES),
  numaNode: fc.constantFrom(null, 0, 1),
  tier: fc.constantFrom("ssd", "hdd", undefined),
  healthy: mostly(true),
  draining: mostly(false),
  hostUp: mostly(true),
  hostSchedulable: mostly(true),
  total: fc.constantFrom(0n, 50n, 100n, 200n, 200n),
  used: fc.constantFrom(0n, 0n, 50n, 95n),
  free: fc.constantFrom(0n, 20n, 100n, 200n, 200n),
  allocated: fc.constantFrom(0n, 0n, 10n, 50n, 150n),
  reserved: fc.constantFrom(0n, 0n, 5n, 40n),
  ratio: fc.constantFrom(1, 1.5, 20),
  maxUsedPercent: fc.constantFrom(80, 90, 100),
  reservedPercent: fc.constantFrom(undefined, 0, 10),
  volumeCount: fc.constantFrom(0, 1, 1, 2, 3),
  maxVolumes: fc.constantFrom(undefined, 0, 3),
  load: fc.constantFrom(undefined, 0, 2, 5),
  /** Twins of the pool on the next hosts: equal scores, so ties have to be broken (by pool id). */
  twins: fc.constantFrom(0, 0, 1, 2),
});

const arbCluster = fc
  .array(fc.tuple(arbPool, fc.double({ min: 0, max: 1, noNaN: true })), { minLength: 0, maxLength: 12 })
  .map((specs) =>
    specs.flatMap(([s, order]) =>
      Array.from({ length: 1 + s.twins }, (_, t) => {
        const host = HOSTS[(HOSTS.indexOf(s.host) + t) % HOSTS.length]!;
        return [{ ...s, host }, (order + t / 7) % 1] as const;
      }),
    ),
  )
  .chain((specs) =>
    fc.record({
      // Pools in a random order, so ties are broken by id rank, not by position.
      pools: fc.constant(
        specs
          .map(([s, order], n) => ({ s, order, id: `${s.host}/p${n}` }))
          .sort((a, b) => a.order - b.order)
          .map(
            ({ s, id }): PoolCandidate => ({
              id,
              hostId: s.host,
              kind: s.kind,
              zone: s.zone,
              numaNode: s.numaNode,
              labels: s.tier ? { tier: s.tier } : {},
              formats: s.formats,
              healthy: s.healthy,
              draining: s.draining,
              hostUp: s.hostUp,
              hostSchedulable: s.hostSchedulable,
              totalBytes: s.total * GiB,
              usedBytes: s.used * GiB,
              freeBytes: s.free * GiB,
              allocatedBytes: s.allocated * GiB,
              reservedBytes: s.reserved * GiB,
              overcommitRatio: s.ratio,
              maxUsedPercent: s.maxUsedPercent,
              reservedPercent: s.reservedPercent,
              volumeCount: s.volumeCount,
              maxVolumes: s.maxVolumes,
              load: s.load,
            }),
          ),
      ),
      groups: fc.array(fc.record({ hostId: fc.constantFrom(...HOSTS), zone: fc.constantFrom(...ZONES) }), {
        maxLength: 3,
      }),
    }),
  );

/** Mostly absent, so that most requests can be placed and the choice among pools is what is tested. */
const sometimes = <T>(a: fc.Arbitrary<T>) =>
  fc.oneof({ arbitrary: fc.constant(undefined), weight: 5 }, { arbitrary: a, weight: 1 });

const arbRequest = fc.record({
  name: fc.constantFrom("root", "data", "log"),
  sizeBytes: fc.constantFrom(0n, 1n, 10n, 30n, 100n).map((g) => g * GiB),
  format: fc.constantFrom("raw" as const, "raw" as const, "qcow2" as const),
  constraints: fc.record({
    poolKinds: sometimes(fc.subarray(KINDS, { minLength: 1 })),
    hostId: sometimes(fc.constantFrom(...HOSTS, "elsewhere")),
    poolId: sometimes(fc.constantFrom("h0/p0", "h1/p1", "h2/p3", "gone/p9")),
    zone: sometimes(fc.constantFrom("z1", "z2", "z9")),
    poolLabels: sometimes(fc.constantFrom({ tier: "ssd" }, { tier: "hdd" }, { tier: "ssd", rack: "r1" })),
    numa: sometimes(
      fc.record({
        hostId: fc.constantFrom(...HOSTS, "elsewhere"),
        node: fc.constantFrom(undefined, 0, 1),
        required: fc.boolean(),
      }),
    ),
    antiAffinityGroup: sometimes(fc.constant("db")),
    antiAffinityScope: sometimes(fc.constantFrom("host" as const, "zone" as const)),
    strategy: sometimes(fc.constantFrom("spread" as const, "binpack" as const)),
  }),
}) as fc.Arbitrary<PlacementRequest>;

const arbWeights = fc.option(
  fc.record(Object.fromEntries(SCORERS.map((name) => [name, fc.constantFrom(0, 0.25, 1, 2)])), {
    requiredKeys: [],
  }),
  { nil: undefined },
);

/** What a decision chose: the same for the fast and the explained path. */
const choice = (d: PlacementDecision) => ({
  feasible: d.feasible,
  poolId: d.poolId,
  hostId: d.hostId,
  numaNode: d.numaNode,
  cpuSet: d.cpuSet,
  summary: d.feasible ? d.summary : "",
});

function view(cluster: { pools: PoolCandidate[]; groups: { hostId: string; zone: string }[] }): ClusterView {
  const numa = new Map(
    HOSTS.map((h) => [
      h,
      [
        { id: 0, cpuList: "0-3" },
        { id: 1, cpuList: "4-7" },
      ],
    ]),
  );
  return { pools: cluster.pools, numa, groups: new Map([["db", cluster.groups]]) };
}

describe("the fast path and the explained path", () => {
  it("choose the same pool, placement after placement", () => {
    fc.assert(
      fc.property(
        arbCluster,
        fc.array(arbRequest, { minLength: 1, maxLength: 6 }),
        arbWeights,
        (c, reqs, w) => {
          const s = new Scheduler(view(c), { weights: w });
          for (const req of reqs) {
            const fast = s.place(req);
            const explained = s.place(req, { explain: true });
            expect(choice(fast)).toEqual(choice(explained));
            expect(explained.candidates).toHaveLength(c.pools.length);
            if (explained.feasible) expect(explained.candidates[0]!.poolId).toBe(fast.poolId);
            if (fast.feasible)
              s.reserve(
                fast.poolId,
                req.sizeBytes,
                req.constraints.antiAffinityGroup ? { name: "db" } : undefined,
              );
          }
        },
      ),
      { numRuns: 1500 },
    );
  });

  it("place a group on the same pools, or refuse it alike", () => {
    fc.assert(
      fc.property(
        arbCluster,
        fc.array(arbRequest, { minLength: 1, maxLength: 4 }),
        arbWeights,
        (c, reqs, w) => {
          const s = new Scheduler(view(c), { weights: w });
          const fast = s.placeGroup(reqs);
          const explained = s.placeGroup(reqs, { explain: true });
          expect(explained.feasible).toBe(fast.feasible);
          expect(explained.decisions.map(choice)).toEqual(fast.decisions.map(choice));
        },
      ),
      { numRuns: 1000 },
    );
  });

  it("count a pool's refusal under the first filter that refuses it", () => {
    const codes = FILTER_TABLE.map((f) => f.code);
    expect(new Set(codes).size).toBe(codes.length);
    fc.assert(
      fc.property(arbCluster, arbRequest, (c, req) => {
        const d = new Scheduler(view(c)).place(req, { explain: true });
        const byName = new Map<string, number>();
        for (const v of d.candidates)
          if (!v.feasible) byName.set(v.refusedBy, (byName.get(v.refusedBy) ?? 0) + 1);
        expect(d.refusals).toEqual(byName);
      }),
      { numRuns: 1000 },
    );
  });
});

/** Every column a decision reads, as plain values (so two Columns compare with toEqual). */
function columnsOf(c: Columns) {
  return {
    ids: c.ids,
    rank: [...c.rank],
    host: [...c.host],
    zone: [...c.zone],
    kindBit: [...c.kindBit],
    formatMask: [...c.formatMask],
    state: [...c.state],
    numaNode: [...c.numaNode],
    headroom: [...c.headroom],
    invLimit: [...c.invLimit],
    reserved: [...c.reserved],
    count: [...c.count],
    maxVolumes: [...c.maxVolumes],
    load: [...c.load],
    maxCount: c.maxCount,
    invMaxLoad: c.invMaxLoad,
    pools: c.pools,
  };
}

describe("columns updated in place", () => {
  it("equal the columns rebuilt from scratch, and decide alike", () => {
    fc.assert(
      fc.property(
        arbCluster,
        arbCluster,
        fc.array(fc.tuple(fc.nat(), fc.nat()), { minLength: 1, maxLength: 8 }),
        arbRequest,
        (a, b, updates, req) => {
          fc.pre(a.pools.length > 0 && b.pools.length > 0);
          const live = new Columns(view(a));
          // Label masks cached before the updates must follow them.
          compileRequest(live, { ...req, constraints: { poolLabels: { tier: "ssd" } } });
          const pools = [...a.pools];
          for (const [i, j] of updates) {
            const k = i % pools.length;
            const reading = { ...b.pools[j % b.pools.length]!, id: pools[k]!.id, hostId: pools[k]!.hostId };
            const next = { ...reading, zone: pools[k]!.zone };
            expect(live.update(k, next)).toBe(true);
            pools[k] = next;
          }
          const rebuilt = new Columns(view({ pools, groups: a.groups }));
          expect(columnsOf(live)).toEqual(columnsOf(rebuilt));
          const ssd = { ...req, constraints: { ...req.constraints, poolLabels: { tier: "ssd" } } };
          for (const r of [req, ssd]) {
            const fromLive = new Scheduler(live).place(r);
            const fromScratch = new Scheduler(rebuilt).place(r);
            expect(choice(fromLive)).toEqual(choice(fromScratch));
            expect(fromLive.candidates).toEqual(fromScratch.candidates);
          }
        },
      ),
      { numRuns: 1000 },
    );
  });

  it("refuse a reading that moves the pool to another host or zone", () => {
    const pool = (zone: string): PoolCandidate => ({
      id: "h0/p",
      hostId: "h0",
      kind: "dir",
      zone,
      numaNode: null,
      labels: {},
      formats: ["raw"],
      healthy: true,
      draining: false,
      hostUp: true,
      hostSchedulable: true,
      totalBytes: GiB,
      usedBytes: 0n,
      freeBytes: GiB,
      allocatedBytes: 0n,
      reservedBytes: 0n,
      overcommitRatio: 1,
      maxUsedPercent: 90,
      volumeCount: 0,
    });
    const c = new Columns({ pools: [pool("z1")], numa: new Map(), groups: new Map() });
    expect(c.update(0, pool("z2"))).toBe(false);
    expect(c.update(0, { ...pool("z1"), hostId: "h1" })).toBe(false);
    expect(c.pools[0]!.zone).toBe("z1");
  });
});

describe("the fast path's best few", () => {
  it("are the explained path's first feasible candidates, in order", () => {
    fc.assert(
      fc.property(arbCluster, arbRequest, arbWeights, (c, req, w) => {
        const s = new Scheduler(view(c), { weights: w });
        const fast = s.place(req);
        const explained = s.place(req, { explain: true });
        const feasible = explained.candidates.filter((v) => v.feasible).slice(0, 3);
        expect(fast.candidates.map((v) => v.poolId)).toEqual(feasible.map((v) => v.poolId));
        expect(fast.candidates.map((v) => v.score)).toEqual(feasible.map((v) => v.score));
        expect(fast.poolsConsidered).toBe(c.pools.length);
      }),
      { numRuns: 1000 },
    );
  });
});
