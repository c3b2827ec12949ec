import { create } from "@bufbuild/protobuf";
import {
  CreateSnapshotRequestSchema,
  CreateVolumeRequestSchema,
  DeleteSnapshotRequestSchema,
  DeleteVolumeRequestSchema,
  OperationResultSchema,
  RevertSnapshotRequestSchema,
  VolumeFormat,
} from "@stowage/proto";
import {
  getOperation,
  getSnapshotById,
  getVolumeById,
  insertSnapshot,
  ledgerDiscrepancies,
  type OperationRow,
  transitionSnapshot,
  type VolumeRow,
} from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSnapshot, deleteSnapshot, revertSnapshot } from "./lifecycle-service.js";
import { applyResult } from "./results.js";
import { addVolume, GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";
import { createVolume, deleteVolume } from "./volume-service.js";

describe("applying operation results (on PGlite)", () => {
  let f: ServiceFixture;
  let pool: string;

  const succeed = (op: OperationRow | undefined, artifact?: { sizeBytes: bigint; path?: string }) =>
    applyResult(
      f.ctx,
      create(OperationResultSchema, {
        operationId: op!.id,
        hostId: "h1",
        success: true,
        ...(artifact ? { artifact: { ...artifact, allocatedBytes: 4096n } } : {}),
      }),
    );
  const fail = (op: OperationRow | undefined, message: string) =>
    applyResult(
      f.ctx,
      create(OperationResultSchema, {
        operationId: op!.id,
        hostId: "h1",
        success: false,
        error: { code: "tool_failed", message },
      }),
    );
  const volume = async (v: VolumeRow) => (await getVolumeById(f.sql, v.id))!;

  /** A qcow2 volume with an available snapshot `v1`, and a revert to it in flight. */
  async function reverting(name: string) {
    const v = await addVolume(f.sql, { name, poolId: pool, format: "qcow2" });
    await f.sql.begin(async (tx) => {
      const s = await insertSnapshot(tx, {
        id: `snap-${name.padEnd(32, "0")}`,
        name: "v1",
        volumeId: v.id,
        sizeBytes: v.sizeBytes,
        operationId: "op-setup",
      });
      await transitionSnapshot(tx, s, "available");
    });
    const out = await revertSnapshot(
      f.ctx,
      create(RevertSnapshotRequestSchema, { volume: name, snapshot: "v1" }),
      "test",
    );
    expect((await volume(v)).state).toBe("reverting");
    return { v, ...out };
  }

  beforeAll(async () => {
    f = await openServiceFixture();
    pool = await f.addPool("files", "dir", ["qcow2", "raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  it("makes a created volume available with its artefact, once", async () => {
    const out = await createVolume(
      f.ctx,
      create(CreateVolumeRequestSchema, { name: "fresh", sizeBytes: GiB, format: VolumeFormat.RAW }),
      "test",
    );
    await succeed(out.operation, { sizeBytes: GiB, path: "/pool/fresh" });
    const v = await volume(out.volume!);
    expect(v).toMatchObject({ state: "available", hostPath: "/pool/fresh", allocatedBytes: 4096n });
    expect((await getOperation(f.sql, out.operation!.id))?.state).toBe("succeeded");
    // The same result delivered again changes nothing.
    await fail(out.operation, "late duplicate");
    expect(await volume(out.volume!)).toEqual(v);
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("moves a reverted volume from reverting back to available", async () => {
    const { v, operation } = await reverting("rolled-back");
    await succeed(operation, { sizeBytes: v.sizeBytes });
    expect(await volume(v)).toMatchObject({ state: "available", error: null });
  });

  it("leaves a volume whose revert failed available as it was, with the error on it and on the snapshot", async () => {
    const { v, snapshot, operation } = await reverting("revert-fails");
    await fail(operation, "qemu-img snapshot -a failed");
    expect(await volume(v)).toMatchObject({
      state: "available",
      error: { message: "qemu-img snapshot -a failed" },
    });
    expect((await getSnapshotById(f.sql, snapshot.id))?.error?.message).toBe("qemu-img snapshot -a failed");
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("moves a deleted volume to deleted and releases its capacity", async () => {
    const v = await addVolume(f.sql, { name: "gone", poolId: pool, format: "raw" });
    const out = await deleteVolume(f.ctx, create(DeleteVolumeRequestSchema, { volume: "gone" }), "test");
    await succeed(out.operation);
    expect((await volume(v)).state).toBe("deleted");
    expect(await ledgerDiscrepancies(f.sql)).toEqual([]);
  });

  it("leaves a snapshot deleted while it was being created as deleting, then deletes it", async () => {
    await addVolume(f.sql, { name: "snappy", poolId: pool, format: "qcow2" });
    const made = await createSnapshot(
      f.ctx,
      create(CreateSnapshotRequestSchema, { volume: "snappy", name: "s1" }),
      "test",
    );
    const deleting = await deleteSnapshot(
      f.ctx,
      create(DeleteSnapshotRequestSchema, { volume: "snappy", snapshot: "s1" }),
      "test",
    );
    expect(deleting.snapshot.state).toBe("deleting");
    // deleting -> available is not a transition: the late create result leaves it as it is.
    await succeed(made.operation);
    expect((await getSnapshotById(f.sql, made.snapshot.id))?.state).toBe("deleting");
    await succeed(deleting.operation);
    expect((await getSnapshotById(f.sql, made.snapshot.id))?.state).toBe("deleted");
  });
});
