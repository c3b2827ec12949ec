import { create } from "@bufbuild/protobuf";
import { PoolKind, PoolSchema } from "@stowage/proto";
import { describe, expect, it } from "vitest";
import { poolDetails, poolTable } from "./views.js";

const GiB = 1024n ** 3n;
const now = new Date("2026-12-04T02:00:00Z");
const local = create(PoolSchema, {
  id: "a/local",
  name: "local",
  hostId: "a",
  kind: PoolKind.DIR,
  healthy: true,
});
const shared = create(PoolSchema, {
  id: "a/vms",
  name: "vms",
  hostId: "a",
  kind: PoolKind.NETFS,
  healthy: true,
  shared: true,
  share: "nfs://203.0.113.10/export/vms",
  attachedHostIds: ["b", "c"],
  capacity: { totalBytes: 500n * GiB, freeBytes: 400n * GiB, provisionedBytes: 8n * GiB },
  volumeCount: 2,
});

describe("pool views", () => {
  it("lists a shared pool once, with the hosts attached to it", () => {
    const lines = poolTable([local, shared], { format: "table", now }).trimEnd().split("\n");
    expect(lines[0]).toMatch(
      /^POOL\s+KIND\s+STATUS\s+NUMA\s+SIZE\s+FREE\s+PROVISIONED\s+RESERVED\s+VOLUMES\s+ATTACHED$/,
    );
    expect(lines).toHaveLength(3);
    expect(lines[1]).toMatch(/^a\/local\s+dir\s.*\s-$/);
    expect(lines[2]).toMatch(/^a\/vms\s+netfs\s+healthy\s+-\s+500 GiB\s+400 GiB\s+8 GiB\s.*\s2\s+b,c$/);
    // Without shared pools the table is as it was; wide output always has the column.
    expect(poolTable([local], { format: "table", now })).not.toContain("ATTACHED");
    expect(poolTable([local], { format: "wide", now })).toContain("ATTACHED");
  });

  it("shows a shared pool's share and attached hosts in its details", () => {
    const text = poolDetails(shared, { format: "table", now });
    expect(text).toMatch(/^Share:\s+nfs:\/\/203\.0\.113\.10\/export\/vms$/m);
    expect(text).toMatch(/^Attached hosts:\s+b,c$/m);
    expect(poolDetails(local, { format: "table", now })).not.toMatch(/Share:|Attached hosts:/);
  });
});
