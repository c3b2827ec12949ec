import { describe, expect, it } from "vitest";
import { Columns } from "./columns.js";
import { Scheduler } from "./scheduler.js";
import type { AttachedHost, PlacementRequest, PoolCandidate } from "./types.js";

const GiB = 1024n ** 3n;

function pool(id: string, over: Partial<PoolCandidate> = {}): PoolCandidate {
  return {
    id,
    hostId: id.split("/")[0]!,
    kind: "netfs",
    zone: "",
    numaNode: null,
    labels: {},
    formats: ["raw", "qcow2"],
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

const attached = (hostId: string, over: Partial<AttachedHost> = {}): AttachedHost => ({
  hostId,
  hostUp: true,
  hostSchedulable: true,
  healthy: true,
  ...over,
});

const req = (constraints: PlacementRequest["constraints"] = {}): PlacementRequest => ({
  name: "v",
  sizeBytes: GiB,
  format: "qcow2",
  constraints,
});

/** The decision both ways (fast and explained), which must agree: pool, host and the refusing filters. */
function place(pools: PoolCandidate[], r: PlacementRequest) {
  const s = new Scheduler({ pools, numa: new Map(), groups: new Map() });
  const fast = s.place(r);
  const explained = s.place(r, { explain: true });
  expect([explained.poolId, explained.hostId]).toEqual([fast.poolId, fast.hostId]);
  return fast;
}

describe("placing in a shared pool", () => {
  const shared = pool("a/nfs", { attached: [attached("b")] });

  it("lands a request pinned to an attached host in the shared pool, through that host", () => {
    const d = place([shared, pool("c/local", { kind: "dir" })], req({ hostId: "b" }));
    expect([d.feasible, d.poolId, d.hostId]).toEqual([true, "a/nfs", "b"]);
    // Pinned to the owner, through the owner; to a host that does not reach it, refused by the selector.
    expect(place([shared], req({ hostId: "a" })).hostId).toBe("a");
    const c = place([shared, pool("c/local", { kind: "dir" })], req({ hostId: "c", poolKinds: ["netfs"] }));
    expect(c.feasible).toBe(false);
    expect(c.refusals?.get("selector")).toBe(1);
  });

  it("sends an unpinned request through the owner, or through an up attached host when the owner is down", () => {
    expect(place([shared], req()).hostId).toBe("a");
    const ownerDown = pool("a/nfs", {
      hostUp: false,
      attached: [attached("b", { hostUp: false }), attached("c")],
    });
    expect(place([ownerDown], req()).hostId).toBe("c");
    const cordoned = pool("a/nfs", { hostSchedulable: false, attached: [attached("b")] });
    expect(place([cordoned], req()).hostId).toBe("b");
    const allDown = pool("a/nfs", { hostUp: false, attached: [attached("b", { hostUp: false })] });
    const d = place([allDown], req());
    expect(d.feasible).toBe(false);
    expect(d.refusals?.get("host-up")).toBe(1);
  });

  it("judges a pinned request by the attached host's own state and health, and the pool's capacity once", () => {
    const down = pool("a/nfs", { attached: [attached("b", { hostUp: false })] });
    expect(place([down], req({ hostId: "b" })).refusals?.get("host-up")).toBe(1);
    // The owner being down does not stop a placement through b.
    const ownerDown = pool("a/nfs", { hostUp: false, attached: [attached("b")] });
    expect(place([ownerDown], req({ hostId: "b" })).hostId).toBe("b");
    const sick = pool("a/nfs", { attached: [attached("b", { healthy: false })] });
    const refused = new Scheduler({ pools: [sick], numa: new Map(), groups: new Map() }).place(
      req({ hostId: "b" }),
      {
        explain: true,
      },
    );
    expect(refused.candidates[0]).toMatchObject({
      refusedBy: "pool-healthy",
      reason: "pool is unhealthy on host b",
    });
    const full = pool("a/nfs", { allocatedBytes: 100n * GiB, freeBytes: 0n, attached: [attached("b")] });
    expect(place([full], req({ hostId: "b" })).refusals?.get("capacity")).toBe(1);
  });

  it("moves an attached host's state in place, and asks for a rebuild when the attached hosts change", () => {
    const c = new Columns({ pools: [shared], numa: new Map(), groups: new Map() });
    const s = new Scheduler(c);
    expect(s.place(req({ hostId: "b" })).feasible).toBe(true);
    expect(c.update(0, pool("a/nfs", { attached: [attached("b", { hostUp: false })] }))).toBe(true);
    expect(s.place(req({ hostId: "b" })).feasible).toBe(false);
    expect(c.update(0, pool("a/nfs", { attached: [attached("b"), attached("c")] }))).toBe(false);
    expect(c.update(0, pool("a/nfs"))).toBe(false);
  });
});
