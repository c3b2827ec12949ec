import { newId, StowageError } from "@stowage/core";
import {
  createKeyedLock,
  type DriverBackend,
  guardDriver,
  type PoolDriver,
  type VolumeArtifact,
} from "@stowage/drivers/testing";
import { describe, expect, it } from "vitest";

// The guard on its own, over a backend that records every step it is asked to run.

const MiB = 1024n * 1024n;

function recordingBackend(kind: "dir" | "rbd", existing: Set<string>) {
  const steps: string[] = [];
  let running = 0;
  let overlapped = false;
  const artifact = (id: string): VolumeArtifact => ({
    volumeId: id,
    poolName: "p",
    sizeBytes: 64n * MiB,
    format: "raw",
    allocatedBytes: 0n,
    path: `/x/${id}`,
    operationId: "",
  });
  const step =
    <A extends unknown[], R>(name: string, result: (...args: A) => R) =>
    async (...args: A): Promise<R> => {
      steps.push(name);
      running++;
      if (running > 1) overlapped = true;
      await new Promise((r) => setTimeout(r, 5));
      running--;
      return result(...args);
    };
  const backend: DriverBackend<string, string | undefined> = {
    kind,
    poolName: "p",
    where: `${kind} pool p`,
    lock: createKeyedLock(),
    findVolume: async (id) => (existing.has(id) ? id : undefined),
    inspectNames: async (id) => (existing.has(id) ? id : undefined),
    check: async () => ({ healthy: true, message: "" }),
    capacity: async () => ({ totalBytes: 0n, usedBytes: 0n, freeBytes: 0n, provisionedBytes: 0n }),
    list: async () => ({ volumes: [], foreign: [] }),
    artifact: async (id) => artifact(id),
    create: step("create", (spec) => ({ artifact: artifact(spec.volumeId), adopted: false })),
    delete: step("delete", () => ({ existed: true })),
    ...(kind === "rbd" ? { explainWipe: () => "zeros never reach the old data" } : {}),
    resize: step("resize", (id: string) => artifact(id)),
    createSnapshot: step("createSnapshot", (id: string, snapshotId: string) => ({
      snapshot: { snapshotId, volumeId: id, sizeBytes: 0n, createdAt: "", operationId: "" },
      adopted: false,
    })),
    listSnapshots: step("listSnapshots", () => []),
    deleteSnapshot: step("deleteSnapshot", () => ({ existed: true })),
    revertSnapshot: step("revertSnapshot", (id: string) => artifact(id)),
    clone: async (spec, _names, withSource) => {
      steps.push("clone");
      return withSource(async () => ({ artifact: artifact(spec.volumeId), adopted: false }));
    },
    flatten: step("flatten", (id: string) => artifact(id)),
  };
  return { driver: guardDriver(backend), steps, overlapped: () => overlapped };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "ok";
  } catch (e) {
    if (e instanceof StowageError) return e.code;
    throw e;
  }
}

/** Every call that takes a volume id, and (last three) those that take a snapshot id too. */
function everyCall(driver: PoolDriver, volumeId: string, snapshotId: string): (() => Promise<unknown>)[] {
  const op = { operationId: newId("op") };
  return [
    () => driver.createVolume({ volumeId, sizeBytes: 64n * MiB, format: "raw", ...op }),
    () => driver.deleteVolume(volumeId, op),
    () => driver.resizeVolume(volumeId, 128n * MiB, { allowShrink: false, ...op }),
    () => driver.info(volumeId),
    () => driver.listSnapshots(volumeId),
    () => driver.cloneVolume({ volumeId, sourceVolumeId: newId("vol"), format: "raw", ...op }),
    () => driver.cloneVolume({ volumeId: newId("vol"), sourceVolumeId: volumeId, format: "raw", ...op }),
    () => driver.flattenVolume(volumeId, op),
    () => driver.createSnapshot(volumeId, snapshotId, op),
    () => driver.deleteSnapshot(volumeId, snapshotId, op),
    () => driver.revertSnapshot(volumeId, snapshotId, op),
  ];
}

describe("guardDriver", () => {
  it("refuses a bad volume or snapshot id in every call before any backend step", async () => {
    const { driver, steps } = recordingBackend("dir", new Set());
    for (const call of everyCall(driver, "../etc", newId("snap"))) {
      expect(await codeOf(call())).toBe("invalid_argument");
    }
    for (const call of everyCall(driver, newId("vol"), "snap-../x").slice(-3)) {
      expect(await codeOf(call())).toBe("invalid_argument");
    }
    expect(steps).toEqual([]);
  });

  it("answers a missing volume the same way for every kind: not_found, existed false, or undefined", async () => {
    const { driver, steps } = recordingBackend("dir", new Set());
    const id = newId("vol");
    const op = { operationId: newId("op") };
    expect(await codeOf(driver.resizeVolume(id, 128n * MiB, { allowShrink: false, ...op }))).toBe(
      "not_found",
    );
    expect(await codeOf(driver.createSnapshot(id, newId("snap"), op))).toBe("not_found");
    expect(await codeOf(driver.revertSnapshot(id, newId("snap"), op))).toBe("not_found");
    expect(await codeOf(driver.listSnapshots(id))).toBe("not_found");
    expect(await codeOf(driver.flattenVolume(id, op))).toBe("not_found");
    expect(await driver.deleteSnapshot(id, newId("snap"), op)).toEqual({ existed: false });
    expect(await driver.info(id)).toBeUndefined();
    expect(steps).toEqual([]);
  });

  it("checks sizes, formats, wipe modes and clone specs against the kind", async () => {
    const { driver, steps } = recordingBackend("rbd", new Set());
    const id = newId("vol");
    const op = { operationId: newId("op") };
    const bad = [
      driver.createVolume({ volumeId: id, sizeBytes: 0n, format: "raw", ...op }),
      driver.createVolume({ volumeId: id, sizeBytes: 64n * MiB, format: "qcow2", ...op }),
      driver.deleteVolume(id, { wipe: "shred" as "zero" }),
      driver.deleteVolume(id, { wipe: "none", wipeBytesPerSecond: -1 }),
      driver.cloneVolume({ volumeId: id, sourceVolumeId: id, format: "raw", ...op }),
    ];
    for (const p of bad) expect(await codeOf(p)).toBe("invalid_argument");
    await expect(driver.deleteVolume(id, { wipe: "zero" })).rejects.toThrow("zeros never reach the old data");
    expect(steps).toEqual([]);
  });

  it("runs the steps of one volume one at a time, and a clone's source is looked up under its own lock", async () => {
    const source = newId("vol");
    const { driver, steps, overlapped } = recordingBackend("dir", new Set([source]));
    const id = newId("vol");
    const op = { operationId: newId("op") };
    await Promise.all([
      driver.createVolume({ volumeId: id, sizeBytes: 64n * MiB, format: "raw", ...op }),
      driver.createVolume({ volumeId: id, sizeBytes: 64n * MiB, format: "raw", ...op }),
      driver.deleteVolume(id, op),
    ]);
    expect(overlapped()).toBe(false);
    expect(steps).toEqual(["create", "create", "delete"]);
    expect(
      await codeOf(driver.cloneVolume({ volumeId: id, sourceVolumeId: source, format: "raw", ...op })),
    ).toBe("ok");
    const missing = driver.cloneVolume({ volumeId: id, sourceVolumeId: newId("vol"), format: "raw", ...op });
    await expect(missing).rejects.toThrow(/^source volume vol-[0-9a-f]{32} does not exist in dir pool p$/);
  });
});
