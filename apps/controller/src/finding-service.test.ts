import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { newId } from "@stowage/core";
import {
  FindingKind,
  FindingService,
  type Inventory,
  InventorySchema,
  PoolKind,
  VolumeFormat,
} from "@stowage/proto";
import {
  applyPoolReports,
  getPool,
  getVolumeById,
  ledgerDiscrepancies,
  listFindings,
  recentAudit,
  upsertHost,
} from "@stowage/store";
import { hostRegistration, newVolume, poolReport, volumeInState } from "@stowage/store/testing";
import { createLogger } from "@stowage/telemetry";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { applyInventory } from "./agents.js";
import { createAuthInterceptor, parseTokens } from "./auth.js";
import { createErrorInterceptor } from "./errors.js";
import { adoptFinding, listFindingsPage, quarantineFinding } from "./finding-service.js";
import { createRoutes } from "./routes/index.js";
import { countRows, GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";

interface Artefact {
  volumeId: string;
  sizeBytes: bigint;
  format?: VolumeFormat;
  pool?: string;
}

/** Every pool of the fixture (100 GiB dir pools), and artefacts of ours in them. */
function inventory(
  hostId: string,
  pools: string[],
  artefacts: Artefact[],
  foreign: string[] = [],
): Inventory {
  return create(InventorySchema, {
    hostId,
    host: { name: hostId, numaNodes: [{ id: 0, cpuList: "0-3", cpus: [0, 1, 2, 3] }] },
    pools: pools.map((name) => ({
      name,
      kind: PoolKind.DIR,
      healthy: true,
      totalBytes: 100n * GiB,
      freeBytes: 100n * GiB,
      formats: [VolumeFormat.QCOW2, VolumeFormat.RAW],
    })),
    volumes: artefacts.map((a) => ({
      volumeId: a.volumeId,
      poolName: a.pool ?? pools[0]!,
      sizeBytes: a.sizeBytes,
      format: a.format ?? VolumeFormat.QCOW2,
      allocatedBytes: 4096n,
      path: `/pools/${a.pool ?? pools[0]}/${a.volumeId}.qcow2`,
      operationId: "op-from-the-marker",
    })),
    foreignArtifacts: foreign,
  });
}

describe("finding service (on PGlite)", () => {
  let f: ServiceFixture;
  const pools = ["a", "b"];
  const held = async (pool: string): Promise<[bigint, bigint, number]> => {
    const p = await getPool(f.sql, pool);
    return [p?.allocatedBytes ?? -1n, p?.reservedBytes ?? -1n, p?.volumeCount ?? -1];
  };
  /** The routes behind the controller's error and auth interceptors, over an in-memory transport. */
  const api = (tokens = "") =>
    createClient(
      FindingService,
      createRouterTransport(createRoutes(f.ctx), {
        router: {
          interceptors: [
            createErrorInterceptor(createLogger("test", "silent")),
            createAuthInterceptor(parseTokens(tokens)),
          ],
        },
      }),
    );

  beforeAll(async () => {
    f = await openServiceFixture();
    await f.addPool("a", "dir", ["qcow2", "raw"]);
    await f.addPool("b", "dir", ["qcow2", "raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  it("lists what an inventory found, with the orphan's size and format, by host, pool and kind", async () => {
    const o1 = newId("vol");
    const o2 = newId("vol");
    await applyInventory(
      f.ctx,
      inventory(
        "h1",
        pools,
        [
          { volumeId: o1, sizeBytes: 3n * GiB },
          { volumeId: o2, sizeBytes: GiB, pool: "b" },
        ],
        ["a/Old Disk.img"],
      ),
    );
    const all = await listFindingsPage(f.ctx, { hostId: "h1", after: "", limit: 100 });
    expect(all.map((x) => [x.kind, x.subject]).sort()).toEqual(
      [
        ["foreign", "a/Old Disk.img"],
        ["orphan", o1],
        ["orphan", o2],
      ].sort(),
    );
    const [inA] = await listFindingsPage(f.ctx, { poolId: "h1/a", kind: "orphan", after: "", limit: 100 });
    expect(inA).toMatchObject({
      subject: o1,
      sizeBytes: 3n * GiB,
      format: "qcow2",
      path: `/pools/a/${o1}.qcow2`,
    });
  });

  it("refuses malformed filters and page tokens with INVALID_ARGUMENT", async () => {
    const client = api();
    const refused = async (p: Promise<unknown>) => {
      const err = await p.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectError);
      return (err as ConnectError).code;
    };
    expect(await refused(client.listFindings({ kind: 99 as FindingKind }))).toBe(Code.InvalidArgument);
    expect(await refused(client.listFindings({ poolId: "no-slash" }))).toBe(Code.InvalidArgument);
    expect(await refused(client.listFindings({ hostId: "Not A Host" }))).toBe(Code.InvalidArgument);
    expect(await refused(client.listFindings({ pageToken: "eA" }))).toBe(Code.InvalidArgument);
  });

  it("pages through findings over the API, each page after the last", async () => {
    const client = api();
    const seen: string[] = [];
    let pageToken = "";
    do {
      const res = await client.listFindings({ hostId: "h1", pageSize: 1, pageToken });
      seen.push(...res.findings.map((x) => x.subject));
      pageToken = res.nextPageToken;
    } while (pageToken);
    expect(seen).toHaveLength(3);
    expect(new Set(seen).size).toBe(3);
    const orphans = await client.listFindings({ kind: FindingKind.ORPHAN });
    expect(
      orphans.findings.every((x) => x.kind === FindingKind.ORPHAN && x.format === VolumeFormat.QCOW2),
    ).toBe(true);
  });

  it("quarantines an orphan, audited, and keeps it after an inventory that no longer reports it", async () => {
    const [orphan] = await listFindings(f.sql, { poolId: "h1/a", kind: "orphan" });
    const audits = await countRows(f.sql, "audit_log");
    const q = await quarantineFinding(
      f.ctx,
      { volumeId: orphan!.subject, hostId: "", reason: "disk of vm7?" },
      "alice",
    );
    expect(q).toMatchObject({ quarantinedBy: "alice", quarantineReason: "disk of vm7?" });
    const [entry] = await recentAudit(f.sql, 1);
    expect(entry).toMatchObject({
      actor: "alice",
      action: "QuarantineFinding",
      target: orphan!.subject,
      outcome: "ok",
    });
    expect(await countRows(f.sql, "audit_log")).toBe(audits + 1);

    await applyInventory(f.ctx, inventory("h1", pools, []));
    const left = await listFindings(f.sql, { hostId: "h1" });
    expect(left.map((x) => [x.subject, x.quarantinedBy])).toEqual([[orphan!.subject, "alice"]]);

    // Again: nothing changes, the first quarantine's author stays.
    const again = await quarantineFinding(
      f.ctx,
      { volumeId: orphan!.subject, hostId: "h1", reason: "" },
      "bob",
    );
    expect(again).toMatchObject({ quarantinedBy: "alice", quarantineReason: "disk of vm7?" });
  });

  it("refuses bad quarantine requests before writing anything", async () => {
    const audits = await countRows(f.sql, "audit_log");
    const tries = [
      [{ volumeId: "", hostId: "", reason: "" }, "invalid_argument"],
      [{ volumeId: "../etc/passwd", hostId: "", reason: "" }, "invalid_argument"],
      [{ volumeId: newId("vol"), hostId: "Bad Host", reason: "" }, "invalid_argument"],
      [{ volumeId: newId("vol"), hostId: "", reason: "x".repeat(501) }, "invalid_argument"],
      [{ volumeId: newId("vol"), hostId: "", reason: "" }, "not_found"],
    ] as const;
    for (const [req, code] of tries)
      await expect(quarantineFinding(f.ctx, req, "alice")).rejects.toMatchObject({ code });
    expect(await countRows(f.sql, "audit_log")).toBe(audits);
  });

  it("adopts an orphan as an available volume of its reported size and format, holding it in the ledger", async () => {
    const id = newId("vol");
    await applyInventory(f.ctx, inventory("h1", pools, [{ volumeId: id, sizeBytes: 7n * GiB, pool: "b" }]));
    const before = await held("h1/b");
    const v = await adoptFinding(
      f.ctx,
      { volumeId: id, hostId: "h1", name: "vm7-disk0", labels: { app: "x" } },
      "ops",
    );
    expect(v).toMatchObject({
      id,
      name: "vm7-disk0",
      state: "available",
      sizeBytes: 7n * GiB,
      format: "qcow2",
      poolId: "h1/b",
      hostId: "h1",
      hostPath: `/pools/b/${id}.qcow2`,
      allocatedBytes: 4096n,
      labels: { app: "x" },
    });
    expect(await held("h1/b")).toEqual([before[0] + 7n * GiB, 0n, before[2] + 1]);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
    expect((await listFindings(f.sql, { kind: "orphan" })).map((x) => x.subject)).not.toContain(id);
    const [entry] = await recentAudit(f.sql, 1);
    expect(entry).toMatchObject({ actor: "ops", action: "AdoptFinding", target: id, outcome: "ok" });

    // Twice converges: the same volume, nothing held twice, no second audit entry.
    const audits = await countRows(f.sql, "audit_log");
    const again = await adoptFinding(
      f.ctx,
      { volumeId: id, hostId: "", name: "vm7-disk0", labels: {} },
      "ops",
    );
    expect(again.id).toBe(id);
    expect(await held("h1/b")).toEqual([before[0] + 7n * GiB, 0n, before[2] + 1]);
    expect(await countRows(f.sql, "audit_log")).toBe(audits);
    // Under another name it is a conflict, not a second volume.
    await expect(
      adoptFinding(f.ctx, { volumeId: id, hostId: "", name: "other", labels: {} }, "ops"),
    ).rejects.toMatchObject({ code: "already_exists" });

    // The next inventory reports the artefact again: it is a volume now, not an orphan.
    await applyInventory(f.ctx, inventory("h1", pools, [{ volumeId: id, sizeBytes: 7n * GiB, pool: "b" }]));
    expect((await listFindings(f.sql, { kind: "orphan" })).map((x) => x.subject)).not.toContain(id);
  });

  it("adopts a quarantined orphan under its volume id as the name, ending the quarantine", async () => {
    const [q] = await listFindings(f.sql, { kind: "orphan", hostId: "h1" });
    expect(q?.quarantinedBy).toBe("alice");
    const v = await adoptFinding(f.ctx, { volumeId: q!.subject, hostId: "", name: "", labels: {} }, "ops");
    expect([v.name, v.sizeBytes, v.poolId]).toEqual([q!.subject, 3n * GiB, "h1/a"]);
    expect(await listFindings(f.sql, { kind: "orphan", hostId: "h1" })).toEqual([]);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("refuses an orphan that does not fit with RESOURCE_EXHAUSTED and changes nothing", async () => {
    const id = newId("vol");
    await applyInventory(f.ctx, inventory("h1", pools, [{ volumeId: id, sizeBytes: 95n * GiB, pool: "b" }]));
    const before = await held("h1/b");
    const audits = await countRows(f.sql, "audit_log");
    await expect(
      adoptFinding(f.ctx, { volumeId: id, hostId: "h1", name: "too-big", labels: {} }, "ops"),
    ).rejects.toMatchObject({
      code: "resource_exhausted",
      message: expect.stringMatching(/^pool h1\/b cannot hold/),
    });
    expect(await getVolumeById(f.sql, id)).toBeUndefined();
    expect(await held("h1/b")).toEqual(before);
    expect(await countRows(f.sql, "audit_log")).toBe(audits);
    expect((await listFindings(f.sql, { kind: "orphan" })).map((x) => x.subject)).toContain(id);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("refuses a taken name, an unreported format, a deleted volume's id and an unknown orphan, writing nothing", async () => {
    const named = newId("vol");
    const noFormat = newId("vol");
    const deleted = newId("vol");
    await volumeInState(f.sql, newVolume(deleted, "h1/a", GiB, { name: "gone" }), "deleted");
    await f.sql`update volumes set deleted_at = now() - interval '1 hour' where id = ${deleted}`;
    await applyInventory(
      f.ctx,
      inventory("h1", pools, [
        { volumeId: named, sizeBytes: GiB },
        { volumeId: noFormat, sizeBytes: GiB, format: VolumeFormat.UNSPECIFIED },
        { volumeId: deleted, sizeBytes: GiB },
      ]),
    );
    const audits = await countRows(f.sql, "audit_log");
    const volumes = await countRows(f.sql, "volumes");
    const tries = [
      [{ volumeId: named, name: "vm7-disk0" }, "already_exists"],
      [{ volumeId: named, name: "Bad Name" }, "invalid_argument"],
      [{ volumeId: noFormat, name: "" }, "failed_precondition"],
      [{ volumeId: deleted, name: "" }, "failed_precondition"],
      [{ volumeId: newId("vol"), name: "" }, "not_found"],
      [{ volumeId: "vol-;rm -rf /", name: "" }, "invalid_argument"],
    ] as const;
    for (const [req, code] of tries)
      await expect(adoptFinding(f.ctx, { hostId: "", labels: {}, ...req }, "ops")).rejects.toMatchObject({
        code,
      });
    expect(await countRows(f.sql, "audit_log")).toBe(audits);
    expect(await countRows(f.sql, "volumes")).toBe(volumes);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("asks which host when two hosts report the same orphan", async () => {
    const id = newId("vol");
    await upsertHost(f.sql, hostRegistration("h2"));
    await applyPoolReports(f.sql, "h2", [poolReport("a", 100n * GiB, { formats: ["qcow2"] })]);
    await applyInventory(f.ctx, inventory("h1", pools, [{ volumeId: id, sizeBytes: GiB }]));
    await applyInventory(f.ctx, inventory("h2", ["a"], [{ volumeId: id, sizeBytes: GiB }]));
    await expect(
      quarantineFinding(f.ctx, { volumeId: id, hostId: "", reason: "" }, "alice"),
    ).rejects.toMatchObject({
      code: "invalid_argument",
      message: `${id} is an orphan on hosts h1, h2: name one with host_id (stowctl: --host)`,
    });
    expect((await quarantineFinding(f.ctx, { volumeId: id, hostId: "h2", reason: "" }, "alice")).hostId).toBe(
      "h2",
    );
  });

  it("lets viewers list, and only operators and admins quarantine or adopt", async () => {
    const client = api("vic:viewer:tv,otto:operator:to");
    const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });
    const [orphan] = await listFindings(f.sql, { hostId: "h1", kind: "orphan" });
    expect((await client.listFindings({}, as("tv"))).findings.length).toBeGreaterThan(0);
    const audits = await countRows(f.sql, "audit_log");
    const denied = (p: Promise<unknown>) => expect(p).rejects.toMatchObject({ code: Code.PermissionDenied });
    await denied(client.quarantineFinding({ volumeId: orphan!.subject, hostId: "h1" }, as("tv")));
    await denied(client.adoptFinding({ volumeId: orphan!.subject, hostId: "h1" }, as("tv")));
    expect(await countRows(f.sql, "audit_log")).toBe(audits);
    const res = await client.quarantineFinding(
      { volumeId: orphan!.subject, hostId: "h1", reason: "r" },
      as("to"),
    );
    expect(res.finding?.quarantinedBy).toBe("otto");
    expect(res.finding?.quarantinedAt).toBeDefined();
  });
});
