import { create } from "@bufbuild/protobuf";
import { CAPABILITIES, StowageError } from "@stowage/core";
import {
  CloneVolumeRequestSchema,
  CreateSnapshotRequestSchema,
  DeleteVolumeRequestSchema,
  ResizeVolumeRequestSchema,
  RevertSnapshotRequestSchema,
} from "@stowage/proto";
import { getVolumeById, insertSnapshot, transitionSnapshot } from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ControllerContext } from "./context.js";
import { cloneVolume, createSnapshot, resizeVolume, revertSnapshot } from "./lifecycle-service.js";
import {
  addVolume,
  countRows,
  GiB,
  openServiceFixture,
  type ServiceFixture,
} from "./testing/service-fixture.js";
import { deleteVolume } from "./volume-service.js";

/** The code of what `p` was rejected with. */
async function codeOf(p: Promise<unknown>): Promise<string> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  return err instanceof StowageError ? err.code : `not refused (${String(err)})`;
}

describe("lifecycle service (on PGlite)", () => {
  let f: ServiceFixture;
  let dirPool: string;

  beforeAll(async () => {
    f = await openServiceFixture();
    dirPool = await f.addPool("files", "dir", ["qcow2", "raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  describe("capabilities at the API edge", () => {
    it("refuses a snapshot of a raw volume on a dir pool with FAILED_PRECONDITION, writing nothing", async () => {
      await addVolume(f.sql, { name: "raw-disk", poolId: dirPool, format: "raw" });
      const before = await Promise.all(
        (["snapshots", "operations", "audit_log"] as const).map((t) => countRows(f.sql, t)),
      );
      const req = create(CreateSnapshotRequestSchema, { volume: "raw-disk", name: "s1" });
      await expect(createSnapshot(f.ctx, req, "test")).rejects.toThrow(
        /raw volumes on dir pools do not support snapshots/,
      );
      expect(await codeOf(createSnapshot(f.ctx, req, "test"))).toBe("failed_precondition");
      const after = await Promise.all(
        (["snapshots", "operations", "audit_log"] as const).map((t) => countRows(f.sql, t)),
      );
      expect(after).toEqual(before);
    });

    it("accepts the same snapshot once the dir/raw row of the table allows snapshots", async () => {
      const capabilities = {
        ...CAPABILITIES,
        dir: { ...CAPABILITIES.dir, raw: { ...CAPABILITIES.dir.raw!, snapshots: true } },
      };
      const ctx: ControllerContext = { ...f.ctx, capabilities };
      const auditBefore = await countRows(f.sql, "audit_log");
      const req = create(CreateSnapshotRequestSchema, { volume: "raw-disk", name: "s1" });
      const out = await createSnapshot(ctx, req, "test");
      expect(out.snapshot.state).toBe("creating");
      expect(out.operation?.kind).toBe("create_snapshot");
      expect(await countRows(f.sql, "audit_log")).toBe(auditBefore + 1);
    });

    it("refuses a clone, a flatten and a shrink the table does not offer, before writing anything", async () => {
      const v = await addVolume(f.sql, { name: "no-copies", poolId: dirPool, format: "qcow2" });
      const capabilities = {
        ...CAPABILITIES,
        dir: { ...CAPABILITIES.dir, qcow2: { ...CAPABILITIES.dir.qcow2!, flatten: false, shrink: false } },
      };
      const ctx: ControllerContext = { ...f.ctx, capabilities };
      const ops = await countRows(f.sql, "operations");
      const clone = (flatten: boolean) =>
        cloneVolume(
          ctx,
          create(CloneVolumeRequestSchema, { sourceVolume: v.name, name: "copy", flatten }),
          "test",
        );
      expect(await codeOf(clone(true))).toBe("failed_precondition");
      const shrink = create(ResizeVolumeRequestSchema, {
        volume: v.name,
        newSizeBytes: GiB / 2n,
        allowShrink: true,
      });
      await expect(resizeVolume(ctx, shrink, "test")).rejects.toThrow(/do not support shrinking/);
      const noClones = {
        ...capabilities,
        dir: { ...capabilities.dir, qcow2: { ...capabilities.dir.qcow2, clones: false } },
      };
      expect(
        await codeOf(
          cloneVolume(
            { ...ctx, capabilities: noClones },
            create(CloneVolumeRequestSchema, { sourceVolume: v.name, name: "copy" }),
            "test",
          ),
        ),
      ).toBe("failed_precondition");
      expect(await countRows(f.sql, "operations")).toBe(ops);
      expect((await clone(false)).operation?.kind).toBe("clone_volume");
    });
  });

  describe("revert", () => {
    it("moves the volume to reverting, answers a repeat with the same operation, and refuses a delete meanwhile", async () => {
      const v = await addVolume(f.sql, { name: "golden", poolId: dirPool, format: "qcow2" });
      const snap = await f.sql.begin(async (tx) => {
        const s = await insertSnapshot(tx, {
          id: "snap-00000000000000000000000000000001",
          name: "v1",
          volumeId: v.id,
          sizeBytes: v.sizeBytes,
          operationId: "op-x",
        });
        return transitionSnapshot(tx, s, "available");
      });
      const req = create(RevertSnapshotRequestSchema, { volume: "golden", snapshot: "v1" });
      const out = await revertSnapshot(f.ctx, req, "test");
      expect(out.operation?.kind).toBe("revert_snapshot");
      expect(out.operation?.snapshotId).toBe(snap.id);
      expect((await getVolumeById(f.sql, v.id))?.state).toBe("reverting");
      expect((await revertSnapshot(f.ctx, req, "test")).operation?.id).toBe(out.operation?.id);
      const del = deleteVolume(f.ctx, create(DeleteVolumeRequestSchema, { volume: "golden" }), "test");
      await expect(del).rejects.toThrow(/golden is reverting: wait for it to finish/);
    });

    it("refuses a revert where the pool kind and format cannot revert", async () => {
      const capabilities = {
        ...CAPABILITIES,
        dir: { ...CAPABILITIES.dir, qcow2: { ...CAPABILITIES.dir.qcow2!, revert: false } },
      };
      const req = create(RevertSnapshotRequestSchema, { volume: "golden", snapshot: "v1" });
      await expect(revertSnapshot({ ...f.ctx, capabilities }, req, "test")).rejects.toThrow(
        /do not support reverting to a snapshot/,
      );
    });
  });

  it("moves a volume to resizing, holding the new size, and keeps its size until the agent confirms", async () => {
    const v = await addVolume(f.sql, { name: "grow", poolId: dirPool, format: "raw" });
    const out = await resizeVolume(
      f.ctx,
      create(ResizeVolumeRequestSchema, { volume: "grow", newSizeBytes: 2n * GiB }),
      "test",
    );
    expect(out.volume.state).toBe("resizing");
    expect(out.volume.sizeBytes).toBe(v.sizeBytes);
    expect(out.operation?.kind).toBe("resize_volume");
  });
});

describe("request ids make lifecycle calls retry-safe (on PGlite)", () => {
  let f: ServiceFixture;
  let pool: string;

  beforeAll(async () => {
    f = await openServiceFixture();
    pool = await f.addPool("files", "dir", ["qcow2", "raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  /** What the agent's result does to the volume: the operation is over and the volume available again. */
  const finish = (volumeId: string) =>
    f.sql`update volumes set state = 'available', operation_id = null where id = ${volumeId}`;

  it("a revert retried with its request id after it finished returns that revert and runs no second one", async () => {
    const v = await addVolume(f.sql, { name: "vm-root", poolId: pool, format: "qcow2" });
    await f.sql.begin(async (tx) => {
      const s = await insertSnapshot(tx, {
        id: "snap-00000000000000000000000000000009",
        name: "before-upgrade",
        volumeId: v.id,
        sizeBytes: v.sizeBytes,
        operationId: "op-x",
      });
      return transitionSnapshot(tx, s, "available");
    });
    const req = create(RevertSnapshotRequestSchema, {
      volume: "vm-root",
      snapshot: "before-upgrade",
      requestId: "revert-1",
    });
    const first = await revertSnapshot(f.ctx, req, "test");
    await finish(v.id);
    const ops = await countRows(f.sql, "operations");
    // The answer was lost; the client retries: the same operation, nothing new, the volume left as it is.
    for (let i = 0; i < 3; i++) {
      const again = await revertSnapshot(f.ctx, req, "test");
      expect(again.operation?.id).toBe(first.operation?.id);
      expect(again.snapshot.name).toBe("before-upgrade");
    }
    expect(await countRows(f.sql, "operations")).toBe(ops);
    expect((await getVolumeById(f.sql, v.id))?.state).toBe("available");
    // Without a request id a second revert is a new call.
    const fresh = await revertSnapshot(f.ctx, { ...req, requestId: "" }, "test");
    expect(fresh.operation?.id).not.toBe(first.operation?.id);
  });

  it("a resize retried with its request id returns its operation; the id used for another call is ALREADY_EXISTS", async () => {
    const v = await addVolume(f.sql, { name: "data", poolId: pool, format: "raw" });
    const req = create(ResizeVolumeRequestSchema, {
      volume: "data",
      newSizeBytes: 2n * GiB,
      requestId: "grow-1",
    });
    const first = await resizeVolume(f.ctx, req, "test");
    expect(first.operation?.requestId).toBe("grow-1");
    await finish(v.id);
    expect((await resizeVolume(f.ctx, req, "test")).operation?.id).toBe(first.operation?.id);
    const ops = await countRows(f.sql, "operations");
    const reuse = create(DeleteVolumeRequestSchema, { volume: "data", requestId: "grow-1" });
    await expect(deleteVolume(f.ctx, reuse, "test")).rejects.toMatchObject({
      code: "already_exists",
      message: expect.stringMatching(/request id grow-1 was already used for resize volume of volume vol-/),
    });
    expect(await countRows(f.sql, "operations")).toBe(ops);
    expect((await getVolumeById(f.sql, v.id))?.state).toBe("available");
  });
});
