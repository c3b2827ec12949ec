import { stat } from "node:fs/promises";
import { join } from "node:path";
import { create, fromBinary } from "@bufbuild/protobuf";
import { cephxUserFor, isCephxKey, StowageError } from "@stowage/core";
import {
  AgentCommandSchema,
  CreateExportRequestSchema,
  DeleteExportRequestSchema,
  DeleteVolumeRequestSchema,
  ExportArtifactSchema,
  ExportKind,
  OperationResultSchema,
  UpdateExportRequestSchema,
} from "@stowage/proto";
import { getExport, getOperation, getVolumeById, transitionVolume, upsertHost } from "@stowage/store";
import { hostRegistration } from "@stowage/store/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pkiDirOf } from "./config.js";
import { publishableCommand } from "./export-commands.js";
import {
  createExport,
  deleteExport,
  exportCredentials,
  exportToWire,
  updateExportHosts,
} from "./export-service.js";
import { createControllerMetrics } from "./metrics.js";
import { applyResult } from "./results.js";
import { SECRET_KEY_FILE, secretBox, secretBoxFromKey } from "./secret-box.js";
import {
  addVolume,
  codeOf,
  countRows,
  openServiceFixture,
  type ServiceFixture,
} from "./testing/service-fixture.js";
import { deleteVolume } from "./volume-service.js";

const iscsi = (volume: string, allowedHostIds: string[], o: { chap?: boolean; requestId?: string } = {}) =>
  create(CreateExportRequestSchema, {
    volume,
    kind: ExportKind.ISCSI,
    allowedHostIds,
    chap: o.chap ?? false,
    requestId: o.requestId ?? "",
  });

describe("export service (on PGlite)", () => {
  let f: ServiceFixture;
  let dirPool: string;
  let n = 0;
  const volume = async () => addVolume(f.sql, { name: `v${++n}`, poolId: dirPool, format: "qcow2" });
  /** What a refused call must leave as it was. */
  const counts = async () => ({
    exports: Number((await f.sql`select count(*)::int as n from exports`)[0]!.n),
    operations: await countRows(f.sql, "operations"),
    audit: await countRows(f.sql, "audit_log"),
  });
  const commandOf = async (opId: string) => {
    const op = (await getOperation(f.sql, opId))!;
    return { op, stored: fromBinary(AgentCommandSchema, op.command) };
  };
  const result = (operationId: string, success: boolean, uri = "") =>
    create(OperationResultSchema, {
      operationId,
      hostId: "h1",
      success,
      ...(uri ? { export: create(ExportArtifactSchema, { uri }) } : {}),
      ...(success ? {} : { error: { code: "internal", message: "tgtadm failed" } }),
    });

  beforeAll(async () => {
    f = await openServiceFixture();
    dirPool = await f.addPool("files", "dir", ["qcow2", "raw"]);
    for (const [h, ip] of [
      ["h2", "203.0.113.12"],
      ["h3", "203.0.113.13"],
    ] as const)
      await upsertHost(
        f.sql,
        hostRegistration(h, { initiatorName: `iqn.2026-12.test:${h}`, addresses: [ip] }),
      );
    await upsertHost(f.sql, hostRegistration("h4")); // no initiator name, no address
  });
  afterAll(async () => {
    await f?.close();
  });

  it("makes an iSCSI export with its operation, and sends the CHAP secret only in the published command", async () => {
    const v = await volume();
    const out = await createExport(f.ctx, iscsi(v.name, ["h2"], { chap: true }), "alice");
    expect(out.export).toMatchObject({
      volumeId: v.id,
      hostId: "h1",
      kind: "iscsi",
      state: "creating",
      allowedHostIds: ["h2"],
    });
    expect(out.export.chapUser).toMatch(/^stowage-[0-9a-f]{12}$/);
    expect(out.operation).toMatchObject({ kind: "create_export", hostId: "h1", exportId: out.export.id });
    const { op, stored } = await commandOf(out.operation!.id);
    expect(stored.payload.case).toBe("createExport");
    const cmd = stored.payload.value as {
      chapSecret: string;
      allowed: { initiatorName: string; addresses: string[] }[];
    };
    expect(cmd.chapSecret).toBe("");
    expect(cmd.allowed).toMatchObject([
      { initiatorName: "iqn.2026-12.test:h2", addresses: ["203.0.113.12"] },
    ]);
    const published = fromBinary(AgentCommandSchema, await publishableCommand(f.ctx, op));
    const secret = (published.payload.value as { chapSecret: string }).chapSecret;
    expect(secret).toHaveLength(16);
    // The database holds it sealed only; no audit row holds it.
    const [row] = await f.sql<
      { chapSecret: string }[]
    >`select chap_secret from exports where id = ${out.export.id}`;
    expect(row!.chapSecret).toMatch(/^v1\./);
    expect(row!.chapSecret).not.toContain(secret);
    const audit = await f.sql`select * from audit_log where target = ${out.export.id}`;
    expect(audit).toHaveLength(1);
    expect(JSON.stringify(audit, (_k, x) => (typeof x === "bigint" ? String(x) : x))).not.toContain(secret);
    expect(
      JSON.stringify(exportToWire(out.export), (_k, x) => (typeof x === "bigint" ? String(x) : x)),
    ).not.toContain(secret);
  });

  it("answers the same export when the same call is made ten times", async () => {
    const v = await volume();
    const first = await createExport(f.ctx, iscsi(v.id, ["h2", "h3"]), "alice");
    const before = await counts();
    for (let i = 0; i < 10; i++) {
      const again = await createExport(f.ctx, iscsi(v.id, ["h3", "h2", "h3"]), "alice");
      expect(again.export.id).toBe(first.export.id);
      expect(again.operation?.id).toBe(first.operation?.id);
    }
    expect(await counts()).toEqual(before);
    const byRequest = await createExport(
      f.ctx,
      iscsi(v.id, ["h2"], { requestId: "req-exp-1" }),
      "alice",
    ).catch((e: StowageError) => e.code);
    expect(byRequest).toBe("already_exists");
    // A request id answers its own export again, and is refused for another volume.
    const other = await volume();
    const withId = await createExport(f.ctx, iscsi(other.id, ["h3"], { requestId: "req-exp-2" }), "alice");
    expect(
      (await createExport(f.ctx, iscsi(other.id, ["h3"], { requestId: "req-exp-2" }), "alice")).export.id,
    ).toBe(withId.export.id);
    expect(
      await codeOf(createExport(f.ctx, iscsi(v.id, ["h2", "h3"], { requestId: "req-exp-2" }), "alice")),
    ).toBe("already_exists");
  });

  it("refuses bad input with a clear error and writes nothing", async () => {
    const v = await volume();
    const creating = await addVolume(f.sql, { name: `v${++n}`, poolId: dirPool, format: "raw" });
    await f.sql`update volumes set state = 'creating' where id = ${creating.id}`;
    const gone = await volume();
    await f.sql`update volumes set state = 'deleted' where id = ${gone.id}`;
    const before = await counts();
    const refusals: [string, () => Promise<unknown>, RegExp][] = [
      ["creating volume", () => createExport(f.ctx, iscsi(creating.id, ["h2"]), "a"), /still being created/],
      ["deleted volume", () => createExport(f.ctx, iscsi(gone.id, ["h2"]), "a"), /is deleted/],
      ["unknown volume", () => createExport(f.ctx, iscsi("nope", ["h2"]), "a"), /not found/],
      ["unknown host", () => createExport(f.ctx, iscsi(v.id, ["h9"]), "a"), /host h9 not found/],
      ["serving host", () => createExport(f.ctx, iscsi(v.id, ["h1"]), "a"), /serves this volume/],
      ["no hosts", () => createExport(f.ctx, iscsi(v.id, []), "a"), /allowed_host_ids is empty/],
      ["bad host name", () => createExport(f.ctx, iscsi(v.id, ["../etc"]), "a"), /host/],
      [
        "host without initiator",
        () => createExport(f.ctx, iscsi(v.id, ["h4"]), "a"),
        /no iSCSI initiator name/,
      ],
      [
        "kind the pool does not support",
        () =>
          createExport(
            f.ctx,
            create(CreateExportRequestSchema, { volume: v.id, kind: ExportKind.RBD, allowedHostIds: ["h2"] }),
            "a",
          ),
        /cannot be exported over rbd: use iscsi/,
      ],
      [
        "kind not built",
        () =>
          createExport(
            f.ctx,
            create(CreateExportRequestSchema, { volume: v.id, kind: ExportKind.NFS, allowedHostIds: ["h2"] }),
            "a",
          ),
        /nfs exports are not built/,
      ],
      [
        "no kind",
        () =>
          createExport(
            f.ctx,
            create(CreateExportRequestSchema, { volume: v.id, allowedHostIds: ["h2"] }),
            "a",
          ),
        /kind is required/,
      ],
    ];
    for (const [what, p, message] of refusals) {
      const err = await p().then(
        () => new Error(`${what}: not refused`),
        (e: unknown) => e as Error,
      );
      expect(err, what).toBeInstanceOf(StowageError);
      expect(err.message, what).toMatch(message);
    }
    expect(await counts()).toEqual(before);
  });

  it("becomes active with the agent's URI, and in error when the agent fails", async () => {
    const ok = await createExport(f.ctx, iscsi((await volume()).id, ["h2"]), "a");
    await applyResult(f.ctx, result(ok.operation!.id, true, "iscsi://203.0.113.11:3260/iqn.x:y/1"));
    expect(await getExport(f.sql, ok.export.id)).toMatchObject({
      state: "active",
      uri: "iscsi://203.0.113.11:3260/iqn.x:y/1",
      error: null,
    });
    const badVolume = (await volume()).id;
    const bad = await createExport(f.ctx, iscsi(badVolume, ["h2"]), "a");
    await applyResult(f.ctx, result(bad.operation!.id, false));
    expect(await getExport(f.sql, bad.export.id)).toMatchObject({ state: "error" });
    expect((await getExport(f.sql, bad.export.id))!.error?.message).toMatch(/tgtadm failed/);
    // The same call again retries it: one new operation, the same export, and it becomes active.
    const retry = await createExport(f.ctx, iscsi(badVolume, ["h2"]), "a");
    expect(retry.export).toMatchObject({ id: bad.export.id, state: "creating", error: null });
    expect(retry.operation!.id).not.toBe(bad.operation!.id);
    await applyResult(f.ctx, result(retry.operation!.id, true, "iscsi://p/iqn/1"));
    expect(await getExport(f.sql, bad.export.id)).toMatchObject({ state: "active" });
    // A late result of the failed attempt changes nothing now.
    await applyResult(f.ctx, result(bad.operation!.id, false));
    expect(await getExport(f.sql, bad.export.id)).toMatchObject({ state: "active" });
  });

  it("adds and removes hosts on a live export with one new command; a call that changes nothing sends none", async () => {
    const made = await createExport(f.ctx, iscsi((await volume()).id, ["h2"]), "a");
    await applyResult(f.ctx, result(made.operation!.id, true, "iscsi://p/iqn/1"));
    const upd = (add: string[], remove: string[]) =>
      updateExportHosts(
        f.ctx,
        create(UpdateExportRequestSchema, {
          exportId: made.export.id,
          addAllowedHostIds: add,
          removeAllowedHostIds: remove,
        }),
        "a",
      );
    const moved = await upd(["h3"], ["h2"]);
    expect(moved.export.allowedHostIds).toEqual(["h3"]);
    expect(moved.operation!.id).not.toBe(made.operation!.id);
    const { stored } = await commandOf(moved.operation!.id);
    expect((stored.payload.value as { allowed: { hostId: string }[] }).allowed.map((a) => a.hostId)).toEqual([
      "h3",
    ]);
    // The first command's late result does not undo the newer state.
    const ops = await countRows(f.sql, "operations");
    const same = await upd(["h3"], ["h2"]);
    expect(same.operation?.id).toBe(moved.operation!.id);
    expect(await countRows(f.sql, "operations")).toBe(ops);
    expect(await codeOf(upd(["h9"], []))).toBe("not_found");
    expect(await codeOf(upd(["h2"], ["h2"]))).toBe("invalid_argument");
    await applyResult(f.ctx, result(moved.operation!.id, true, "iscsi://p/iqn/1"));
    expect(await getExport(f.sql, made.export.id)).toMatchObject({ state: "active", allowedHostIds: ["h3"] });
  });

  it("unexports once however often it is asked, and refuses to delete an exported volume", async () => {
    const v = await volume();
    const made = await createExport(f.ctx, iscsi(v.id, ["h2"]), "a");
    await applyResult(f.ctx, result(made.operation!.id, true, "iscsi://p/iqn/1"));
    const delVol = deleteVolume(f.ctx, create(DeleteVolumeRequestSchema, { volume: v.id }), "a");
    await expect(delVol).rejects.toThrow(/is exported \(iscsi exp-[0-9a-f]+\): unexport it first/);
    expect((await getVolumeById(f.sql, v.id))!.state).toBe("available");
    const del = () =>
      deleteExport(f.ctx, create(DeleteExportRequestSchema, { exportId: made.export.id }), "a");
    const first = await del();
    expect(first.export.state).toBe("deleting");
    expect(first.operation).toMatchObject({ kind: "delete_export", exportId: made.export.id });
    for (let i = 0; i < 9; i++) expect((await del()).operation?.id).toBe(first.operation!.id);
    await applyResult(f.ctx, result(first.operation!.id, true));
    expect((await getExport(f.sql, made.export.id))!.state).toBe("deleted");
    expect((await del()).export.state).toBe("deleted");
    // Unexported, the volume can be exported again (a new export) and deleted.
    const again = await createExport(f.ctx, iscsi(v.id, ["h2"]), "a");
    expect(again.export.id).not.toBe(made.export.id);
  });

  it("hands the CHAP secret to an allowed host only, and audits each answer without it", async () => {
    const made = await createExport(f.ctx, iscsi((await volume()).id, ["h2"], { chap: true }), "a");
    await applyResult(f.ctx, result(made.operation!.id, true, "iscsi://p/iqn/1"));
    const creds = await exportCredentials(f.ctx, made.export.id, "h2");
    expect(creds.chapUser).toBe(made.export.chapUser);
    const published = fromBinary(
      AgentCommandSchema,
      await publishableCommand(f.ctx, (await getOperation(f.sql, made.operation!.id))!),
    );
    expect(creds.chapSecret).toBe((published.payload.value as { chapSecret: string }).chapSecret);
    expect(await codeOf(exportCredentials(f.ctx, made.export.id, "h3"))).toBe("permission_denied");
    const rows = await f.sql<{ actor: string; outcome: string }[]>`
      select actor, outcome, request::text, error from audit_log
      where action = 'GetExportCredentials' and target = ${made.export.id} order by id`;
    expect(rows.map((r) => [r.actor, r.outcome])).toEqual([
      ["host:h2", "ok"],
      ["host:h3", "denied"],
    ]);
    expect(JSON.stringify(rows)).not.toContain(creds.chapSecret);
  });

  it("grants RBD access with a cephx key per allowed host (the serving host too), handed only to that host", async () => {
    const rbdPool = await f.addPool("ceph", "rbd", ["raw"]);
    const v = await addVolume(f.sql, { name: `v${++n}`, poolId: rbdPool, format: "raw" });
    const out = await createExport(
      f.ctx,
      create(CreateExportRequestSchema, { volume: v.id, kind: ExportKind.RBD, allowedHostIds: ["h2", "h1"] }),
      "alice",
    );
    expect(out.export).toMatchObject({ kind: "rbd", allowedHostIds: ["h1", "h2"], chapUser: "" });
    const { op, stored } = await commandOf(out.operation!.id);
    const storedClients = (stored.payload.value as { allowed: { hostId: string; cephxKey: string }[] })
      .allowed;
    expect(storedClients.map((c) => c.cephxKey)).toEqual(["", ""]);
    const published = fromBinary(AgentCommandSchema, await publishableCommand(f.ctx, op));
    const keys = (published.payload.value as { allowed: { hostId: string; cephxKey: string }[] }).allowed;
    expect(keys.every((c) => isCephxKey(c.cephxKey))).toBe(true);
    expect(keys[0]!.cephxKey).not.toBe(keys[1]!.cephxKey);
    const sealed = await f.sql<
      { cephxKey: string }[]
    >`select cephx_key from export_clients where export_id = ${out.export.id}`;
    for (const k of keys) expect(JSON.stringify(sealed)).not.toContain(k.cephxKey);
    const h2 = await exportCredentials(f.ctx, out.export.id, "h2");
    expect(h2).toMatchObject({ chapUser: "", chapSecret: "", cephxUser: cephxUserFor(out.export.id, "h2") });
    expect(h2.cephxKey).toBe(keys.find((c) => c.hostId === "h2")!.cephxKey);
    expect(await codeOf(exportCredentials(f.ctx, out.export.id, "h3"))).toBe("permission_denied");
    expect(
      await codeOf(
        createExport(
          f.ctx,
          create(CreateExportRequestSchema, {
            volume: v.id,
            kind: ExportKind.RBD,
            allowedHostIds: ["h2"],
            chap: true,
          }),
          "a",
        ),
      ),
    ).toBe("invalid_argument");
    // Adding a host later gives it a key of its own; removing one forgets its key.
    await applyResult(f.ctx, result(out.operation!.id, true, `rbd://127.0.0.1:3300/rbd/${v.id}`));
    const upd = await updateExportHosts(
      f.ctx,
      create(UpdateExportRequestSchema, {
        exportId: out.export.id,
        addAllowedHostIds: ["h3"],
        removeAllowedHostIds: ["h2"],
      }),
      "a",
    );
    const next = fromBinary(
      AgentCommandSchema,
      await publishableCommand(f.ctx, (await getOperation(f.sql, upd.operation!.id))!),
    );
    const nextKeys = (next.payload.value as { allowed: { hostId: string; cephxKey: string }[] }).allowed;
    expect(nextKeys.map((c) => c.hostId)).toEqual(["h1", "h3"]);
    expect(nextKeys[0]!.cephxKey).toBe(keys.find((c) => c.hostId === "h1")!.cephxKey);
    expect(isCephxKey(nextKeys[1]!.cephxKey)).toBe(true);
  });

  it("counts live exports by kind and state in stowage_exports, every kind and state exported", async () => {
    const m = createControllerMetrics(() => f.sql);
    const all = (await m.registry.getMetricsAsJSON()).find((x) => x.name === "stowage_exports")!.values;
    const at = (kind: string, state: string) =>
      all.find((v) => v.labels.kind === kind && v.labels.state === state)?.value;
    const [row] = await f.sql<{ n: number }[]>`
      select count(*)::int as n from exports where kind = 'iscsi' and state = 'active'`;
    expect(row!.n).toBeGreaterThan(0);
    expect(at("iscsi", "active")).toBe(row!.n);
    expect(at("nbd", "creating")).toBe(0);
    expect(all).toHaveLength(4 * 4); // iscsi, nfs, nbd, rbd x creating, active, deleting, error
  });

  it("refuses an export of a volume that is not there any more, even through a retried update", async () => {
    const v = await volume();
    const made = await createExport(f.ctx, iscsi(v.id, ["h2"]), "a");
    const row = (await getVolumeById(f.sql, v.id))!;
    await transitionVolume(f.sql, row, "deleting");
    expect(
      await codeOf(
        updateExportHosts(
          f.ctx,
          create(UpdateExportRequestSchema, { exportId: made.export.id, addAllowedHostIds: ["h3"] }),
          "a",
        ),
      ),
    ).toBe("failed_precondition");
  });
});

describe("secret box", () => {
  it("opens what it sealed for the same export only", () => {
    const box = secretBoxFromKey(Buffer.alloc(32, 7));
    const sealed = box.seal("s3cret-chap-pass", "exp-1");
    expect(sealed).not.toContain("s3cret");
    expect(box.open(sealed, "exp-1")).toBe("s3cret-chap-pass");
    expect(() => box.open(sealed, "exp-2")).toThrow(/does not open/);
    expect(() => secretBoxFromKey(Buffer.alloc(32, 8)).open(sealed, "exp-1")).toThrow(/does not open/);
    expect(box.seal("x", "e")).not.toBe(box.seal("x", "e"));
  });

  it("keeps its key in the PKI directory, 0600, the same for every load", async () => {
    const f = await openServiceFixture();
    try {
      const a = await secretBox(f.ctx.config);
      const path = join(pkiDirOf(f.ctx.config), SECRET_KEY_FILE);
      expect((await stat(path)).mode & 0o777).toBe(0o600);
      const sealed = a.seal("k", "exp-x");
      expect(
        secretBoxFromKey(Buffer.from((await import("node:fs")).readFileSync(path, "utf8"), "base64")).open(
          sealed,
          "exp-x",
        ),
      ).toBe("k");
    } finally {
      await f.close();
    }
  });
});
