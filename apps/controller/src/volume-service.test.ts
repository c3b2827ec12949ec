import { create } from "@bufbuild/protobuf";
import { DeleteVolumeRequestSchema, WipeMode } from "@stowage/proto";
import { getVolumeById } from "@stowage/store";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { addVolume, countRows, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";
import { deleteVolume } from "./volume-service.js";

describe("volume service: delete (on PGlite)", () => {
  let f: ServiceFixture;
  let rbd: string;

  beforeAll(async () => {
    f = await openServiceFixture();
    rbd = await f.addPool("ceph", "rbd", ["raw"]);
  });
  afterAll(async () => {
    await f?.close();
  });

  it("refuses a zero wipe on rbd (it would allocate every object) before writing anything", async () => {
    const v = await addVolume(f.sql, { name: "thin-disk", poolId: rbd, format: "raw" });
    const req = create(DeleteVolumeRequestSchema, { volume: "thin-disk", wipe: WipeMode.ZERO });
    await expect(deleteVolume(f.ctx, req, "test")).rejects.toMatchObject({
      code: "failed_precondition",
      message: "raw volumes on rbd pools cannot be wiped with zero: use none or discard",
    });
    expect((await getVolumeById(f.sql, v.id))?.state).toBe("available");
    expect(await countRows(f.sql, "operations")).toBe(0);
    expect(await countRows(f.sql, "audit_log")).toBe(0);
  });

  it("deletes with a wipe the kind offers: the volume is deleting and the command carries the mode", async () => {
    const req = create(DeleteVolumeRequestSchema, { volume: "thin-disk", wipe: WipeMode.DISCARD });
    const out = await deleteVolume(f.ctx, req, "test");
    expect(out.volume.state).toBe("deleting");
    expect(out.operation?.kind).toBe("delete_volume");
    // Repeating it answers with the deletion in flight.
    expect((await deleteVolume(f.ctx, req, "test")).operation?.id).toBe(out.operation?.id);
  });
});
