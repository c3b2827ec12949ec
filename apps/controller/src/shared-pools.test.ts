import { create, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import {
  AgentCommandSchema,
  CreateVolumeRequestSchema,
  InventorySchema,
  OperationResultSchema,
  PoolKind,
  type PoolReport,
  PoolReportSchema,
  type VolumeArtifactSchema,
  VolumeFormat,
} from "@stowage/proto";
import {
  getOperation,
  getPool,
  ledgerDiscrepancies,
  listFindings,
  type OperationRow,
  upsertHost,
  type VolumeRow,
} from "@stowage/store";
import { hostRegistration } from "@stowage/store/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyInventory } from "./agents.js";
import { poolToWire } from "./convert.js";
import { describePool, listPoolsPage } from "./pool-service.js";
import { applyResult } from "./results.js";
import { liveView } from "./scheduling.js";
import { GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";
import { createVolume } from "./volume-service.js";

const SHARE = "nfs://203.0.113.10/export/vms";

/** A netfs pool report of the share as a host's agent sends it, 1 TiB, under the host's own name for it. */
const nfs = (name: string, share = SHARE): PoolReport =>
  create(PoolReportSchema, {
    name,
    kind: PoolKind.NETFS,
    healthy: true,
    totalBytes: 1024n * GiB,
    usedBytes: 10n * GiB,
    freeBytes: 1014n * GiB,
    formats: [VolumeFormat.QCOW2, VolumeFormat.RAW],
    shared: true,
    share,
  });

/** A full inventory of a host: its record, its pools and what it finds in them. */
const full = (
  hostId: string,
  sequence: bigint,
  pools: PoolReport[],
  volumes: MessageInitShape<typeof VolumeArtifactSchema>[] = [],
) => create(InventorySchema, { hostId, sequence, host: { name: hostId }, pools, volumes });

describe("shared pools in the controller (on PGlite)", () => {
  let f: ServiceFixture;
  const made: { volume: VolumeRow; operation: OperationRow }[] = [];

  /** A create pinned to `hostId` (or unpinned), in the netfs pools. */
  async function carve(name: string, sizeBytes: bigint, hostId?: string) {
    const out = await createVolume(
      f.ctx,
      create(CreateVolumeRequestSchema, {
        name,
        sizeBytes,
        format: VolumeFormat.QCOW2,
        constraints: { poolKinds: [PoolKind.NETFS], ...(hostId ? { hostId } : {}) },
      }),
      "test",
    );
    made.push({ volume: out.volume!, operation: out.operation! });
    return { volume: out.volume!, operation: out.operation! };
  }

  /** The host's agent ran the create: the result comes from the host the command went to. */
  async function succeed(o: { volume: VolumeRow; operation: OperationRow }) {
    await applyResult(
      f.ctx,
      create(OperationResultSchema, {
        operationId: o.operation.id,
        hostId: o.operation.hostId,
        success: true,
        artifact: {
          volumeId: o.volume.id,
          sizeBytes: o.volume.sizeBytes,
          format: VolumeFormat.QCOW2,
          allocatedBytes: 196_608n,
          path: `${SHARE}/${o.volume.id}.qcow2`,
        },
      }),
    );
  }

  beforeAll(async () => {
    f = await openServiceFixture();
    await upsertHost(f.sql, hostRegistration("h2", { zone: "z1" }));
    await upsertHost(f.sql, hostRegistration("h3", { zone: "z1" }));
    // h1 reports the share first and owns the pool; h2 names it otherwise; h3 has a share of its own.
    await applyInventory(f.ctx, full("h1", 1n, [nfs("vms")]));
    await applyInventory(f.ctx, full("h2", 1n, [nfs("shared-vms")]));
    await applyInventory(f.ctx, full("h3", 1n, [nfs("scratch", "nfs://203.0.113.11/scratch")]));
  });
  afterAll(() => f?.close());

  it("lists the share as one pool with its attached host, on the owner's and the attached host's pages", async () => {
    const all = await listPoolsPage(f.ctx, { hostId: "", after: "", limit: 10 });
    expect(all.map((p) => p.pool.id)).toEqual(["h1/vms", "h3/scratch"]);
    const wire = poolToWire(all[0]!.pool, all[0]!.zone);
    expect([wire.share, wire.attachedHostIds, wire.shared, wire.capacity?.totalBytes]).toEqual([
      SHARE,
      ["h2"],
      true,
      1024n * GiB,
    ]);
    expect(poolToWire(all[1]!.pool).attachedHostIds).toEqual([]);
    const onH2 = await listPoolsPage(f.ctx, { hostId: "h2", after: "", limit: 10 });
    expect(onH2.map((p) => p.pool.id)).toEqual(["h1/vms"]);
    expect((await describePool(f.ctx, "h1/vms")).pool.attachedHostIds).toEqual(["h2"]);
  });

  it("places a volume pinned to the attached host in the shared pool, its host and its command h2's", async () => {
    const { volume, operation } = await carve("on-h2", 3n * GiB, "h2");
    expect([volume.poolId, volume.hostId, operation.hostId]).toEqual(["h1/vms", "h2", "h2"]);
    // The command goes to h2 and names the pool as h2's agent knows it.
    const command = fromBinary(AgentCommandSchema, (await getOperation(f.sql, operation.id))!.command);
    expect([command.hostId, command.poolName]).toEqual(["h2", "shared-vms"]);
    await succeed(made.at(-1)!);
    const pinnedH1 = await carve("on-h1", 2n * GiB, "h1");
    const h1Command = fromBinary(AgentCommandSchema, pinnedH1.operation.command);
    expect([pinnedH1.volume.hostId, h1Command.hostId, h1Command.poolName]).toEqual(["h1", "h1", "vms"]);
    await succeed(made.at(-1)!);
  });

  it("keeps one ledger row for 20 creates spread over both hosts, equal to their sizes to the byte", async () => {
    for (let k = 0; k < 20; k++) {
      const host = k % 2 === 0 ? "h1" : "h2";
      const o = await carve(`spread-${k}`, BigInt(k + 1) * GiB + BigInt(k) * 4096n, host);
      expect([o.volume.poolId, o.volume.hostId, o.operation.hostId]).toEqual(["h1/vms", host, host]);
    }
    for (const o of made.slice(2)) await succeed(o);
    const pool = (await getPool(f.sql, "h1/vms"))!;
    const sum = made.reduce((s, o) => s + o.volume.sizeBytes, 0n);
    expect([pool.allocatedBytes, pool.reservedBytes, pool.volumeCount]).toEqual([sum, 0n, 22]);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
    const byHost = await f.sql<{ hostId: string; n: number }[]>`
      select host_id, count(*)::int as n from volumes where pool_id = 'h1/vms' and state = 'available'
      group by host_id order by host_id`;
    expect(byHost).toEqual([
      { hostId: "h1", n: 11 },
      { hostId: "h2", n: 11 },
    ]);
    // The other share's pool holds nothing: the creates were pinned to hosts that do not reach it.
    expect((await getPool(f.sql, "h3/scratch"))!.allocatedBytes).toBe(0n);
  });

  it("sends an unpinned create through the owner, and through the attached host while the owner is down", async () => {
    const up = await carve("unpinned-up", GiB);
    expect([up.volume.poolId, up.volume.hostId].join(" ")).toMatch(/^(h1\/vms h1|h3\/scratch h3)$/);
    await f.sql`update hosts set state = 'down' where id in ('h1', 'h3')`;
    await liveView(f.ctx).sync();
    const down = await carve("unpinned-down", GiB);
    expect([down.volume.poolId, down.volume.hostId, down.operation.hostId]).toEqual(["h1/vms", "h2", "h2"]);
    await f.sql`update hosts set state = 'up' where id in ('h1', 'h3')`;
    await liveView(f.ctx).sync();
    await succeed(up);
    await succeed(down);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("judges the share's listing in the owner's inventory against every host's volumes, with no false orphans", async () => {
    const listing = made
      .filter((o) => o.volume.poolId === "h1/vms")
      .map((o) => ({
        volumeId: o.volume.id,
        sizeBytes: o.volume.sizeBytes,
        format: VolumeFormat.QCOW2,
        path: `${SHARE}/${o.volume.id}.qcow2`,
      }));
    // Both hosts list the whole share, under their own names for it.
    await applyInventory(
      f.ctx,
      full(
        "h1",
        2n,
        [nfs("vms")],
        listing.map((a) => ({ ...a, poolName: "vms" })),
      ),
    );
    await applyInventory(
      f.ctx,
      full(
        "h2",
        2n,
        [nfs("shared-vms")],
        listing.map((a) => ({ ...a, poolName: "shared-vms" })),
      ),
    );
    expect(await listFindings(f.sql, {})).toEqual([]);
    // An artefact in the share that no volume row has is an orphan of the shared pool, found by its owner.
    await applyInventory(
      f.ctx,
      full(
        "h1",
        3n,
        [nfs("vms")],
        [
          ...listing.map((a) => ({ ...a, poolName: "vms" })),
          {
            volumeId: "vol-0000000000000000000000000000dead",
            poolName: "vms",
            sizeBytes: GiB,
            path: `${SHARE}/vol-0000000000000000000000000000dead.qcow2`,
          },
        ],
      ),
    );
    const findings = await listFindings(f.sql, {});
    expect(findings.map((x) => [x.hostId, x.kind, x.subject, x.poolId])).toEqual([
      ["h1", "orphan", "vol-0000000000000000000000000000dead", "h1/vms"],
    ]);
    // A volume the database has and the share lacks is missing, whichever host carved it.
    const gone = made.find((o) => o.volume.hostId === "h2" && o.volume.poolId === "h1/vms")!;
    await applyInventory(
      f.ctx,
      full(
        "h1",
        4n,
        [nfs("vms")],
        listing.filter((a) => a.volumeId !== gone.volume.id).map((a) => ({ ...a, poolName: "vms" })),
      ),
    );
    expect((await listFindings(f.sql, {})).map((x) => [x.hostId, x.kind, x.subject])).toEqual([
      ["h1", "missing", gone.volume.id],
    ]);
  });

  it("counts the share's capacity once, from whichever host reported last", async () => {
    const used = (g: bigint) => create(PoolReportSchema, { ...nfs("shared-vms"), usedBytes: g * GiB });
    await applyInventory(
      f.ctx,
      create(InventorySchema, { hostId: "h2", sequence: 3n, delta: true, pools: [used(40n)] }),
    );
    const pool = (await getPool(f.sql, "h1/vms"))!;
    expect([pool.usedBytes, pool.totalBytes]).toEqual([40n * GiB, 1024n * GiB]);
    const [row] = await f.sql<{ n: number; total: bigint }[]>`
      select count(*)::int as n, sum(total_bytes)::int8 as total from pools where kind = 'netfs' and present`;
    expect(row).toEqual({ n: 2, total: 2048n * GiB });
  });

  it("stops placing through a host that detaches from the share (the attachment's change reaches the live view)", async () => {
    await applyInventory(f.ctx, full("h2", 4n, []));
    await liveView(f.ctx).sync();
    await expect(carve("after-detach", GiB, "h2")).rejects.toMatchObject({ code: "failed_precondition" });
    // The volumes h2 carried in the share are h1's now: their operations run on a host that reaches the share.
    const [left] = await f.sql<{ n: number }[]>`
      select count(*)::int as n from volumes where pool_id = 'h1/vms' and host_id = 'h2' and state <> 'deleted'`;
    expect(left!.n).toBe(0);
    expect((await describePool(f.ctx, "h1/vms")).pool.attachedHostIds).toEqual([]);
    await applyInventory(f.ctx, full("h2", 5n, [nfs("shared-vms")]));
    await liveView(f.ctx).sync();
    const back = await carve("after-reattach", GiB, "h2");
    expect([back.volume.poolId, back.volume.hostId]).toEqual(["h1/vms", "h2"]);
  });
});
