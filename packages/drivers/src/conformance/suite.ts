import { type Capability, capabilitiesOf, newId, type PoolKind, type VolumeFormat } from "@stowage/core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { CloneSpec, PoolDriver, VolumeArtifact } from "../driver.js";
import { readPattern, readPatterns, writePatterns } from "./qemu-io.js";

/**
 * The driver conformance suite, in the spirit of csi-sanity: every pool kind runs the same behavioural tests
 * against a real backend, so "idempotent", "crash-safe" and "reads back what was written" mean the same thing
 * for dir, lvm, lvmthin and rbd. Data is checked through qemu-io, the way QEMU itself sees the artefact.
 *
 * A driver registers it from `<kind>.conformance.test.ts` beside this file (scripts/test-conformance.mjs runs
 * those per kind):
 *
 *   defineConformanceSuite({
 *     kind: "rbd",
 *     formats: ["raw"],
 *     setup: async () => ({ driver, qemuIoArgs: (a) => ["--image-opts", `driver=raw,file.driver=rbd,...`], teardown }),
 *     qemuIoEnv: { CEPH_CONF: conf },
 *     skipReason: haveCeph ? undefined : "ceph-mon not installed",
 *   });
 *
 * Each format gets the tests that core's capability table (`capabilitiesOf(kind, format)`) promises for it; a
 * test needing a capability the row leaves out is registered as skipped, its name saying which.
 *
 * Contract for drivers, beyond PoolDriver's comments: every test cleans up after itself (clones, then
 * snapshots, then volumes), so the pool must end as empty as it began; deleteSnapshot of a missing volume may
 * answer existed: false or not_found; a snapshot with dependent clones may refuse deletion
 * (failed_precondition) or delete it and keep the clones readable; a clone smaller than its source is refused
 * (invalid_argument or failed_precondition); a create, snapshot or clone redelivered with the same ids is
 * adopted (adopted: true) and never makes a second artefact.
 */

export interface ConformancePool {
  driver: PoolDriver;
  /** qemu-io arguments that open an artefact, e.g. ["-f", "raw", path], or ["--image-opts", "driver=raw,file.driver=rbd,..."]. */
  qemuIoArgs(artifact: VolumeArtifact): string[];
  teardown(): Promise<void>;
}

export interface ConformanceTarget {
  kind: PoolKind;
  /** Each format's tests are those core's capability table (`capabilitiesOf`) promises for it. */
  formats: VolumeFormat[];
  /** A fresh, empty pool (called once per suite, in beforeAll). */
  setup(): Promise<ConformancePool>;
  /** Extra env for qemu-io (e.g. CEPH_CONF). */
  qemuIoEnv?: Record<string, string>;
  /** Set when the suite cannot run here: every test is registered but skipped with this reason in its name. */
  skipReason?: string;
}

const MiB = 1024n * 1024n;
/** Small enough for loop-device VGs and TCG guests, large enough for two data regions far apart. */
const VOLUME_SIZE = 64n * MiB;
const GROWN_SIZE = 96n * MiB;
const SHRUNK_SIZE = 48n * MiB;
/** Two 1 MiB regions: the first megabyte (where headers live) and one deep inside the volume. */
const REGIONS: readonly { offset: bigint; length: bigint }[] = [
  { offset: 0n, length: MiB },
  { offset: 40n * MiB, length: MiB },
];
const REPEAT = 10;
/** Per test: LVM in a TCG guest and librbd are slow, and some tests repeat an operation ten times. */
const TEST_TIMEOUT_MS = 300_000;
const SETUP_TIMEOUT_MS = 600_000;

const PATTERN_A = 0xa1;
const PATTERN_B = 0xb2;
const PATTERN_C = 0xc3;
const PATTERN_D = 0xd4;

/** Ids a caller could use to escape the pool or reach a shell; each must be refused before any I/O. */
const BAD_VOLUME_IDS = [
  "../x",
  "vol-../../etc",
  "",
  "vol-",
  "/etc/passwd",
  `vol-${"0".repeat(31)}/`,
  `vol-${"A".repeat(32)}`,
  `vol-${"0".repeat(32)};rm -rf /`,
  `snap-${"0".repeat(32)}`,
];
const BAD_SNAPSHOT_IDS = ["../x", "snap-../../etc", "", `snap-${"0".repeat(31)}/`, `vol-${"0".repeat(32)}`];

type Tracked =
  | { kind: "volume"; volumeId: string }
  | { kind: "snapshot"; volumeId: string; snapshotId: string };

/** Registers `describe("conformance <kind>")` with one block per format. */
export function defineConformanceSuite(target: ConformanceTarget): void {
  describe(`conformance ${target.kind}`, () => {
    let pool: ConformancePool | undefined;
    let baseline: string[] = [];

    beforeAll(async () => {
      if (target.skipReason !== undefined) return;
      pool = await target.setup();
      // What a fresh pool already shows as foreign (a thin pool's own LV, say): the suite must add nothing.
      baseline = (await pool.driver.list()).foreign;
    }, SETUP_TIMEOUT_MS);
    afterAll(async () => {
      await pool?.teardown();
    }, SETUP_TIMEOUT_MS);

    const current = (): ConformancePool => {
      if (!pool) throw new Error(`conformance ${target.kind}: the pool was not set up`);
      return pool;
    };

    for (const format of target.formats) defineFormatTests(target, format, current, () => baseline);
  });
}

function defineFormatTests(
  target: ConformanceTarget,
  format: VolumeFormat,
  pool: () => ConformancePool,
  foreignAtStart: () => string[],
): void {
  const caps = capabilitiesOf(target.kind, format);
  const env = target.qemuIoEnv;

  /** Registers a test, or a skipped one whose name says why (the suite cannot run, or a capability is off). */
  function test(name: string, needs: readonly Capability[], fn: () => Promise<void>): void {
    const missing = needs.filter((c) => !caps[c]);
    const reason =
      target.skipReason ??
      (missing.length > 0 ? `capability ${missing.join(", ")} is false for ${target.kind}` : undefined);
    if (reason !== undefined) it.skip(`${name} [skipped: ${reason}]`, () => undefined);
    else it(name, fn, TEST_TIMEOUT_MS);
  }

  describe(format, () => {
    // Everything a test made, undone in reverse order after it (clones before their snapshots, snapshots
    // before their volumes), so each test starts from an empty pool and a leak shows up as a failure.
    let tracked: Tracked[] = [];

    afterEach(async () => {
      if (target.skipReason !== undefined) return;
      const d = pool().driver;
      const errors: unknown[] = [];
      for (const t of tracked.reverse()) {
        try {
          if (t.kind === "volume") await d.deleteVolume(t.volumeId, { operationId: newId("op") });
          else await d.deleteSnapshot(t.volumeId, t.snapshotId, { operationId: newId("op") });
        } catch (e) {
          // The volume of a snapshot may be gone already; that is not a leak.
          if (!(t.kind === "snapshot" && codeOf(e) === "not_found")) errors.push(e);
        }
      }
      tracked = [];
      if (errors.length > 0) {
        throw new AggregateError(errors, `conformance ${target.kind}: cleanup failed: ${String(errors[0])}`);
      }
    }, TEST_TIMEOUT_MS);

    const driver = () => pool().driver;
    const io = (a: VolumeArtifact) => pool().qemuIoArgs(a);

    async function createVolume(sizeBytes = VOLUME_SIZE): Promise<VolumeArtifact> {
      const volumeId = newId("vol");
      tracked.push({ kind: "volume", volumeId });
      const { artifact } = await driver().createVolume({
        volumeId,
        operationId: newId("op"),
        sizeBytes,
        format,
      });
      return artifact;
    }

    async function createSnapshot(volumeId: string): Promise<string> {
      const snapshotId = newId("snap");
      tracked.push({ kind: "snapshot", volumeId, snapshotId });
      await driver().createSnapshot(volumeId, snapshotId, { operationId: newId("op") });
      return snapshotId;
    }

    async function clone(spec: Omit<CloneSpec, "volumeId" | "operationId" | "format">) {
      const volumeId = newId("vol");
      tracked.push({ kind: "volume", volumeId });
      return driver().cloneVolume({ volumeId, operationId: newId("op"), format, ...spec });
    }

    /** The artefact as the driver reports it now (paths may change, e.g. after a flatten). */
    async function fresh(volumeId: string): Promise<VolumeArtifact> {
      const a = await driver().info(volumeId);
      if (!a) throw new Error(`volume ${volumeId} is missing from pool ${driver().poolName}`);
      return a;
    }

    async function fill(volumeId: string, pattern: number): Promise<void> {
      const a = await fresh(volumeId);
      await writePatterns(
        io(a),
        env,
        REGIONS.map((r) => ({ pattern, ...r })),
      );
    }

    const regionsHold = (a: VolumeArtifact, pattern: number) =>
      readPatterns(
        io(a),
        env,
        REGIONS.map((r) => ({ pattern, ...r })),
      );

    async function holds(volumeId: string, pattern: number): Promise<boolean> {
      return regionsHold(await fresh(volumeId), pattern);
    }

    /** Which pattern both regions hold: the value compared, so a failure says what was read instead. */
    async function readsAs(volumeId: string): Promise<string> {
      const a = await fresh(volumeId);
      for (const p of [PATTERN_A, PATTERN_B, PATTERN_C, PATTERN_D, 0]) {
        if (await regionsHold(a, p)) return `0x${p.toString(16).padStart(2, "0")}`;
      }
      return "mixed";
    }

    /**
     * Makes `volumeId` a clone source that holds A. With snapshots it also returns a snapshot of A, after
     * which the volume holds B: a clone of the snapshot must read A, not the volume's current data.
     */
    async function cloneSource(volumeId: string): Promise<string | undefined> {
      await fill(volumeId, PATTERN_A);
      if (!caps.snapshots) return undefined;
      const snapshotId = await createSnapshot(volumeId);
      await fill(volumeId, PATTERN_B);
      return snapshotId;
    }

    async function copiesOf(volumeId: string): Promise<number> {
      const { volumes } = await driver().list();
      return volumes.filter((v) => v.volumeId === volumeId).length;
    }

    async function snapshotCopies(volumeId: string, snapshotId: string): Promise<number> {
      return (await driver().listSnapshots(volumeId)).filter((s) => s.snapshotId === snapshotId).length;
    }

    /** The pool as list() sees it, for "nothing changed" assertions. */
    async function inventory(): Promise<unknown> {
      const { volumes, foreign } = await driver().list();
      return { volumes: volumes.map((v) => [v.volumeId, v.sizeBytes, v.path]), foreign };
    }

    describe("volumes", () => {
      test(`create repeated ${REPEAT} times converges to one ${format} artefact`, [], async () => {
        const spec = { volumeId: newId("vol"), operationId: newId("op"), sizeBytes: VOLUME_SIZE, format };
        tracked.push({ kind: "volume", volumeId: spec.volumeId });
        const results = [];
        for (let i = 0; i < REPEAT; i++) results.push(await driver().createVolume(spec));
        expect(results.map((r) => r.adopted)).toEqual([false, ...Array(REPEAT - 1).fill(true)]);
        const first = results[0]!.artifact;
        expect(first).toMatchObject({
          volumeId: spec.volumeId,
          poolName: driver().poolName,
          sizeBytes: VOLUME_SIZE,
          format,
          operationId: spec.operationId,
        });
        for (const r of results) expect(r.artifact.path).toBe(first.path);
        expect(await copiesOf(spec.volumeId)).toBe(1);
        expect(await driver().info(spec.volumeId)).toMatchObject({
          path: first.path,
          sizeBytes: VOLUME_SIZE,
        });
      });

      test(`the same create arriving ${REPEAT} times at once makes one artefact`, [], async () => {
        const spec = { volumeId: newId("vol"), operationId: newId("op"), sizeBytes: VOLUME_SIZE, format };
        tracked.push({ kind: "volume", volumeId: spec.volumeId });
        const results = await Promise.all(Array.from({ length: REPEAT }, () => driver().createVolume(spec)));
        expect(results.filter((r) => !r.adopted)).toHaveLength(1);
        expect(new Set(results.map((r) => r.artifact.path)).size).toBe(1);
        expect(await copiesOf(spec.volumeId)).toBe(1);
      });

      test(
        "a create redelivered after its result was dropped adopts the artefact and keeps its data",
        [],
        async () => {
          const spec = { volumeId: newId("vol"), operationId: newId("op"), sizeBytes: VOLUME_SIZE, format };
          tracked.push({ kind: "volume", volumeId: spec.volumeId });
          // The first result is "lost": the agent crashed after the work, before it published the result.
          await driver().createVolume(spec);
          await fill(spec.volumeId, PATTERN_A);
          const again = await driver().createVolume(spec);
          expect(again.adopted).toBe(true);
          expect(again.artifact).toMatchObject({ volumeId: spec.volumeId, operationId: spec.operationId });
          expect(await readsAs(spec.volumeId)).toBe("0xa1");
          expect(await copiesOf(spec.volumeId)).toBe(1);
        },
      );

      test("a create that conflicts with an existing volume is refused and changes nothing", [], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        const code = await errorCode(
          driver().createVolume({
            volumeId: a.volumeId,
            operationId: newId("op"),
            sizeBytes: VOLUME_SIZE * 2n,
            format,
          }),
        );
        expect(code).toBe("already_exists");
        expect((await fresh(a.volumeId)).sizeBytes).toBe(VOLUME_SIZE);
        expect(await readsAs(a.volumeId)).toBe("0xa1");
      });

      test(
        `delete repeated ${REPEAT} times: the first reports it existed, the rest converge`,
        [],
        async () => {
          const a = await createVolume();
          const existed = [];
          for (let i = 0; i < REPEAT; i++) {
            existed.push((await driver().deleteVolume(a.volumeId, { operationId: newId("op") })).existed);
          }
          expect(existed).toEqual([true, ...Array(REPEAT - 1).fill(false)]);
          expect(await copiesOf(a.volumeId)).toBe(0);
          expect(await driver().info(a.volumeId)).toBeUndefined();
        },
      );

      test("deleting a volume that never existed succeeds with existed: false", [], async () => {
        const before = await inventory();
        expect(await driver().deleteVolume(newId("vol"))).toEqual({ existed: false });
        expect(await inventory()).toEqual(before);
      });

      test("a deleted volume id can be created again, empty", [], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        await driver().deleteVolume(a.volumeId);
        const again = await driver().createVolume({
          volumeId: a.volumeId,
          operationId: newId("op"),
          sizeBytes: VOLUME_SIZE,
          format,
        });
        expect(again.adopted).toBe(false);
        expect(await holds(a.volumeId, PATTERN_A)).toBe(false);
      });

      test("info of an unknown volume is undefined", [], async () => {
        expect(await driver().info(newId("vol"))).toBeUndefined();
      });

      test(`resize repeated ${REPEAT} times converges to the new size and keeps the data`, [], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        const sizes = [];
        for (let i = 0; i < REPEAT; i++) {
          const r = await driver().resizeVolume(a.volumeId, GROWN_SIZE, {
            allowShrink: false,
            operationId: newId("op"),
          });
          sizes.push(r.sizeBytes);
        }
        expect(sizes).toEqual(Array(REPEAT).fill(GROWN_SIZE));
        expect((await fresh(a.volumeId)).sizeBytes).toBe(GROWN_SIZE);
        expect(await copiesOf(a.volumeId)).toBe(1);
        expect(await readsAs(a.volumeId)).toBe("0xa1");
      });

      test("resize refuses to shrink without allowShrink and changes nothing", [], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        const code = await errorCode(
          driver().resizeVolume(a.volumeId, SHRUNK_SIZE, { allowShrink: false, operationId: newId("op") }),
        );
        expect(code).toBe("failed_precondition");
        expect((await fresh(a.volumeId)).sizeBytes).toBe(VOLUME_SIZE);
        expect(await readsAs(a.volumeId)).toBe("0xa1");
      });

      test("resize shrinks with allowShrink and keeps the data before the new end", ["shrink"], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        const r = await driver().resizeVolume(a.volumeId, SHRUNK_SIZE, {
          allowShrink: true,
          operationId: newId("op"),
        });
        expect(r.sizeBytes).toBe(SHRUNK_SIZE);
        expect((await fresh(a.volumeId)).sizeBytes).toBe(SHRUNK_SIZE);
        expect(await readsAs(a.volumeId)).toBe("0xa1");
      });

      test("resize of a missing volume is not_found", [], async () => {
        const code = await errorCode(
          driver().resizeVolume(newId("vol"), GROWN_SIZE, { allowShrink: false, operationId: newId("op") }),
        );
        expect(code).toBe("not_found");
      });

      test(
        "list reports each volume once with its size and format, and nothing new as foreign",
        [],
        async () => {
          const a = await createVolume();
          const b = await createVolume(GROWN_SIZE);
          const { volumes, foreign } = await driver().list();
          expect(foreign).toEqual(foreignAtStart());
          const mine = volumes.filter((v) => v.volumeId === a.volumeId || v.volumeId === b.volumeId);
          expect(mine.map((v) => [v.volumeId, v.sizeBytes, v.format, v.path]).sort()).toEqual(
            [
              [a.volumeId, VOLUME_SIZE, format, a.path],
              [b.volumeId, GROWN_SIZE, format, b.path],
            ].sort(),
          );
          for (const v of mine) expect(v.allocatedBytes).toBeGreaterThanOrEqual(0n);
        },
      );

      test("capacity is sane and provisioned equals the sum of the owned volumes' sizes", [], async () => {
        const before = await driver().capacity();
        await createVolume();
        await createVolume(GROWN_SIZE);
        const cap = await driver().capacity();
        const { volumes } = await driver().list();
        expect(cap.provisionedBytes).toBe(volumes.reduce((s, v) => s + v.sizeBytes, 0n));
        expect(cap.provisionedBytes - before.provisionedBytes).toBe(VOLUME_SIZE + GROWN_SIZE);
        expect(cap.totalBytes).toBeGreaterThan(0n);
        expect(cap.freeBytes).toBeGreaterThanOrEqual(0n);
        expect(cap.usedBytes).toBeGreaterThanOrEqual(0n);
        expect(cap.freeBytes + cap.usedBytes).toBeLessThanOrEqual(cap.totalBytes);
      });
    });

    describe("ids", () => {
      test("invalid volume and operation ids are refused before anything is touched", [], async () => {
        const a = await createVolume();
        const before = await inventory();
        const op = () => ({ operationId: newId("op") });
        for (const bad of BAD_VOLUME_IDS) {
          const calls: [string, Promise<unknown>][] = [
            [
              "createVolume",
              driver().createVolume({ volumeId: bad, sizeBytes: VOLUME_SIZE, format, ...op() }),
            ],
            ["deleteVolume", driver().deleteVolume(bad, op())],
            ["resizeVolume", driver().resizeVolume(bad, GROWN_SIZE, { allowShrink: true, ...op() })],
            ["info", driver().info(bad)],
          ];
          for (const [what, p] of calls)
            expect([what, bad, await errorCode(p)]).toEqual([what, bad, "invalid_argument"]);
        }
        for (const bad of ["../x", "op-../../etc", "", a.volumeId]) {
          const code = await errorCode(
            driver().createVolume({
              volumeId: newId("vol"),
              operationId: bad,
              sizeBytes: VOLUME_SIZE,
              format,
            }),
          );
          expect(["operationId", bad, code]).toEqual(["operationId", bad, "invalid_argument"]);
        }
        expect(await inventory()).toEqual(before);
      });

      test("invalid snapshot ids are refused before anything is touched", ["snapshots"], async () => {
        const a = await createVolume();
        const snap = await createSnapshot(a.volumeId);
        const before = [await inventory(), await driver().listSnapshots(a.volumeId)];
        const op = () => ({ operationId: newId("op") });
        for (const bad of BAD_SNAPSHOT_IDS) {
          const calls: [string, Promise<unknown>][] = [
            ["createSnapshot", driver().createSnapshot(a.volumeId, bad, op())],
            ["deleteSnapshot", driver().deleteSnapshot(a.volumeId, bad, op())],
            ["revertSnapshot", driver().revertSnapshot(a.volumeId, bad, op())],
          ];
          for (const [what, p] of calls)
            expect([what, bad, await errorCode(p)]).toEqual([what, bad, "invalid_argument"]);
        }
        for (const bad of BAD_VOLUME_IDS) {
          const calls: [string, Promise<unknown>][] = [
            ["createSnapshot", driver().createSnapshot(bad, newId("snap"), op())],
            ["deleteSnapshot", driver().deleteSnapshot(bad, snap, op())],
            ["revertSnapshot", driver().revertSnapshot(bad, snap, op())],
            ["listSnapshots", driver().listSnapshots(bad)],
          ];
          for (const [what, p] of calls)
            expect([what, bad, await errorCode(p)]).toEqual([what, bad, "invalid_argument"]);
        }
        expect([await inventory(), await driver().listSnapshots(a.volumeId)]).toEqual(before);
      });

      test("invalid clone ids are refused before anything is touched", ["clones"], async () => {
        const a = await createVolume();
        const before = await inventory();
        const base = { operationId: newId("op"), format };
        for (const bad of BAD_VOLUME_IDS) {
          const calls: [string, Promise<unknown>][] = [
            [
              "cloneVolume.volumeId",
              driver().cloneVolume({ ...base, volumeId: bad, sourceVolumeId: a.volumeId }),
            ],
            [
              "cloneVolume.sourceVolumeId",
              driver().cloneVolume({ ...base, volumeId: newId("vol"), sourceVolumeId: bad }),
            ],
          ];
          if (caps.flatten)
            calls.push(["flattenVolume", driver().flattenVolume(bad, { operationId: newId("op") })]);
          for (const [what, p] of calls)
            expect([what, bad, await errorCode(p)]).toEqual([what, bad, "invalid_argument"]);
        }
        for (const bad of BAD_SNAPSHOT_IDS) {
          const code = await errorCode(
            driver().cloneVolume({
              ...base,
              volumeId: newId("vol"),
              sourceVolumeId: a.volumeId,
              sourceSnapshotId: bad,
            }),
          );
          expect(["cloneVolume.sourceSnapshotId", bad, code]).toEqual([
            "cloneVolume.sourceSnapshotId",
            bad,
            "invalid_argument",
          ]);
        }
        expect(await inventory()).toEqual(before);
      });
    });

    describe("snapshots", () => {
      if (!caps.snapshots && target.skipReason === undefined) {
        it(
          `snapshots of ${format} volumes are refused cleanly (capability snapshots is false)`,
          async () => {
            const a = await createVolume();
            const code = await errorCode(
              driver().createSnapshot(a.volumeId, newId("snap"), { operationId: newId("op") }),
            );
            expect(["failed_precondition", "unimplemented"]).toContain(code);
            expect(await copiesOf(a.volumeId)).toBe(1);
          },
          TEST_TIMEOUT_MS,
        );
      }

      test(`createSnapshot repeated ${REPEAT} times converges to one snapshot`, ["snapshots"], async () => {
        const a = await createVolume();
        const snapshotId = newId("snap");
        const operationId = newId("op");
        tracked.push({ kind: "snapshot", volumeId: a.volumeId, snapshotId });
        const results = [];
        for (let i = 0; i < REPEAT; i++)
          results.push(await driver().createSnapshot(a.volumeId, snapshotId, { operationId }));
        expect(results.map((r) => r.adopted)).toEqual([false, ...Array(REPEAT - 1).fill(true)]);
        expect(results[0]!.snapshot).toMatchObject({
          snapshotId,
          volumeId: a.volumeId,
          sizeBytes: VOLUME_SIZE,
          operationId,
        });
        expect(await snapshotCopies(a.volumeId, snapshotId)).toBe(1);
        expect(await driver().listSnapshots(a.volumeId)).toHaveLength(1);
        expect(await copiesOf(a.volumeId)).toBe(1);
      });

      test("a snapshot redelivered after its result was dropped is adopted", ["snapshots"], async () => {
        const a = await createVolume();
        const snapshotId = await createSnapshot(a.volumeId);
        const again = await driver().createSnapshot(a.volumeId, snapshotId, { operationId: newId("op") });
        expect(again.adopted).toBe(true);
        expect(again.snapshot.snapshotId).toBe(snapshotId);
        expect(await snapshotCopies(a.volumeId, snapshotId)).toBe(1);
      });

      test("listSnapshots of a volume without snapshots is empty", ["snapshots"], async () => {
        const a = await createVolume();
        expect(await driver().listSnapshots(a.volumeId)).toEqual([]);
      });

      test("a snapshot of a missing volume is not_found", ["snapshots"], async () => {
        const code = await errorCode(
          driver().createSnapshot(newId("vol"), newId("snap"), { operationId: newId("op") }),
        );
        expect(code).toBe("not_found");
      });

      test(
        `deleteSnapshot repeated ${REPEAT} times: the first reports it existed, the rest converge`,
        ["snapshots"],
        async () => {
          const a = await createVolume();
          const snapshotId = await createSnapshot(a.volumeId);
          const existed = [];
          for (let i = 0; i < REPEAT; i++) {
            existed.push(
              (await driver().deleteSnapshot(a.volumeId, snapshotId, { operationId: newId("op") })).existed,
            );
          }
          expect(existed).toEqual([true, ...Array(REPEAT - 1).fill(false)]);
          expect(await driver().listSnapshots(a.volumeId)).toEqual([]);
          expect(await copiesOf(a.volumeId)).toBe(1);
        },
      );

      test("deleting a snapshot that never existed succeeds with existed: false", ["snapshots"], async () => {
        const a = await createVolume();
        const r = await driver().deleteSnapshot(a.volumeId, newId("snap"), { operationId: newId("op") });
        expect(r).toEqual({ existed: false });
      });

      test(
        "a snapshot keeps the data of its time: write A, snapshot, write B, revert reads A",
        ["snapshots", "revert"],
        async () => {
          const a = await createVolume();
          await fill(a.volumeId, PATTERN_A);
          const snapshotId = await createSnapshot(a.volumeId);
          await fill(a.volumeId, PATTERN_B);
          expect(await readsAs(a.volumeId)).toBe("0xb2");
          await driver().revertSnapshot(a.volumeId, snapshotId, { operationId: newId("op") });
          expect(await readsAs(a.volumeId)).toBe("0xa1");
        },
      );

      test(
        `revertSnapshot repeated ${REPEAT} times converges and keeps the snapshot`,
        ["snapshots", "revert"],
        async () => {
          const a = await createVolume();
          await fill(a.volumeId, PATTERN_A);
          const snapshotId = await createSnapshot(a.volumeId);
          await fill(a.volumeId, PATTERN_B);
          const operationId = newId("op");
          for (let i = 0; i < REPEAT; i++) {
            const r = await driver().revertSnapshot(a.volumeId, snapshotId, { operationId });
            expect(r).toMatchObject({ volumeId: a.volumeId, sizeBytes: VOLUME_SIZE });
          }
          expect(await readsAs(a.volumeId)).toBe("0xa1");
          expect(await snapshotCopies(a.volumeId, snapshotId)).toBe(1);
          expect(await copiesOf(a.volumeId)).toBe(1);
        },
      );

      test(
        "reverting to a missing snapshot is not_found and changes nothing",
        ["snapshots", "revert"],
        async () => {
          const a = await createVolume();
          await fill(a.volumeId, PATTERN_B);
          const code = await errorCode(
            driver().revertSnapshot(a.volumeId, newId("snap"), { operationId: newId("op") }),
          );
          expect(code).toBe("not_found");
          expect(await readsAs(a.volumeId)).toBe("0xb2");
        },
      );

      test("several snapshots each keep their own data", ["snapshots", "revert"], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        const s1 = await createSnapshot(a.volumeId);
        await fill(a.volumeId, PATTERN_B);
        const s2 = await createSnapshot(a.volumeId);
        await fill(a.volumeId, PATTERN_C);
        expect((await driver().listSnapshots(a.volumeId)).map((s) => s.snapshotId).sort()).toEqual(
          [s1, s2].sort(),
        );
        await driver().revertSnapshot(a.volumeId, s1, { operationId: newId("op") });
        expect(await readsAs(a.volumeId)).toBe("0xa1");
        // Older-snapshot rollbacks may discard newer snapshots on some backends; only ask for s2 if it is there.
        if ((await snapshotCopies(a.volumeId, s2)) === 1) {
          await driver().revertSnapshot(a.volumeId, s2, { operationId: newId("op") });
          expect(await readsAs(a.volumeId)).toBe("0xb2");
        }
      });
    });

    describe("clones", () => {
      test("a clone of a snapshot reads the snapshot's data", ["snapshots", "clones"], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        const snapshotId = await createSnapshot(a.volumeId);
        await fill(a.volumeId, PATTERN_B);
        const { artifact, adopted } = await clone({
          sourceVolumeId: a.volumeId,
          sourceSnapshotId: snapshotId,
        });
        expect(adopted).toBe(false);
        expect(artifact).toMatchObject({ sizeBytes: VOLUME_SIZE, format });
        expect(await readsAs(artifact.volumeId)).toBe("0xa1");
        expect(await readsAs(a.volumeId)).toBe("0xb2");
      });

      test("a clone of a volume reads the volume's current data", ["clones"], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        if (caps.snapshots) await createSnapshot(a.volumeId);
        await fill(a.volumeId, PATTERN_B);
        const { artifact } = await clone({ sourceVolumeId: a.volumeId });
        expect(artifact).toMatchObject({ sizeBytes: VOLUME_SIZE, format });
        expect(await readsAs(artifact.volumeId)).toBe("0xb2");
      });

      test(`clone repeated ${REPEAT} times converges to one artefact`, ["clones"], async () => {
        const a = await createVolume();
        const snapshotId = await cloneSource(a.volumeId);
        const spec: CloneSpec = {
          volumeId: newId("vol"),
          operationId: newId("op"),
          sourceVolumeId: a.volumeId,
          format,
          ...(snapshotId ? { sourceSnapshotId: snapshotId } : {}),
        };
        tracked.push({ kind: "volume", volumeId: spec.volumeId });
        const results = [];
        for (let i = 0; i < REPEAT; i++) results.push(await driver().cloneVolume(spec));
        expect(results.map((r) => r.adopted)).toEqual([false, ...Array(REPEAT - 1).fill(true)]);
        for (const r of results) expect(r.artifact.path).toBe(results[0]!.artifact.path);
        expect(results[0]!.artifact).toMatchObject({
          volumeId: spec.volumeId,
          operationId: spec.operationId,
        });
        expect(await copiesOf(spec.volumeId)).toBe(1);
        expect(await copiesOf(a.volumeId)).toBe(1);
        expect(await readsAs(spec.volumeId)).toBe("0xa1");
      });

      test(
        "a clone is independent of later writes to its source, and the source of writes to the clone",
        ["clones"],
        async () => {
          const a = await createVolume();
          await fill(a.volumeId, PATTERN_A);
          const fromVolume = (await clone({ sourceVolumeId: a.volumeId })).artifact.volumeId;
          let fromSnapshot: string | undefined;
          if (caps.snapshots) {
            const snapshotId = await createSnapshot(a.volumeId);
            fromSnapshot = (await clone({ sourceVolumeId: a.volumeId, sourceSnapshotId: snapshotId }))
              .artifact.volumeId;
          }
          await fill(a.volumeId, PATTERN_B);
          expect(await readsAs(fromVolume)).toBe("0xa1");
          if (fromSnapshot) expect(await readsAs(fromSnapshot)).toBe("0xa1");
          await fill(fromVolume, PATTERN_C);
          if (fromSnapshot) await fill(fromSnapshot, PATTERN_D);
          expect(await readsAs(a.volumeId)).toBe("0xb2");
          expect(await readsAs(fromVolume)).toBe("0xc3");
          if (fromSnapshot) expect(await readsAs(fromSnapshot)).toBe("0xd4");
        },
      );

      test("a clone larger than its source is grown and keeps the data", ["clones"], async () => {
        const a = await createVolume();
        const snapshotId = await cloneSource(a.volumeId);
        const { artifact } = await clone({
          sourceVolumeId: a.volumeId,
          sizeBytes: GROWN_SIZE,
          ...(snapshotId ? { sourceSnapshotId: snapshotId } : {}),
        });
        expect(artifact.sizeBytes).toBe(GROWN_SIZE);
        expect((await fresh(artifact.volumeId)).sizeBytes).toBe(GROWN_SIZE);
        expect(await readsAs(artifact.volumeId)).toBe("0xa1");
        // The grown tail reads as zeros, not as leftovers of anything else.
        const tail = { pattern: 0, offset: VOLUME_SIZE + MiB, length: MiB };
        expect(await readPattern(io(await fresh(artifact.volumeId)), env, tail)).toBe(true);
      });

      test("a clone smaller than its source is refused and leaves nothing", ["clones"], async () => {
        const a = await createVolume();
        const volumeId = newId("vol");
        const code = await errorCode(
          driver().cloneVolume({
            volumeId,
            operationId: newId("op"),
            sourceVolumeId: a.volumeId,
            format,
            sizeBytes: SHRUNK_SIZE,
          }),
        );
        expect(["invalid_argument", "failed_precondition"]).toContain(code);
        expect(await copiesOf(volumeId)).toBe(0);
      });

      test(
        "a clone of a missing volume or snapshot is not_found and leaves nothing",
        ["clones"],
        async () => {
          const volumeId = newId("vol");
          const spec = { volumeId, operationId: newId("op"), format };
          expect(await errorCode(driver().cloneVolume({ ...spec, sourceVolumeId: newId("vol") }))).toBe(
            "not_found",
          );
          if (caps.snapshots) {
            const a = await createVolume();
            const code = await errorCode(
              driver().cloneVolume({ ...spec, sourceVolumeId: a.volumeId, sourceSnapshotId: newId("snap") }),
            );
            expect(code).toBe("not_found");
          }
          expect(await copiesOf(volumeId)).toBe(0);
        },
      );

      test("a clone made with flatten: true survives the deletion of its source", ["clones"], async () => {
        const a = await createVolume();
        const snapshotId = await cloneSource(a.volumeId);
        const { artifact } = await clone({
          sourceVolumeId: a.volumeId,
          flatten: true,
          ...(snapshotId ? { sourceSnapshotId: snapshotId } : {}),
        });
        if (snapshotId) {
          expect(
            (await driver().deleteSnapshot(a.volumeId, snapshotId, { operationId: newId("op") })).existed,
          ).toBe(true);
        }
        expect((await driver().deleteVolume(a.volumeId)).existed).toBe(true);
        expect(await readsAs(artifact.volumeId)).toBe("0xa1");
      });

      test(
        "a snapshot that a clone depends on is either refused for deletion or leaves the clone intact",
        ["snapshots", "clones"],
        async () => {
          const a = await createVolume();
          await fill(a.volumeId, PATTERN_A);
          const snapshotId = await createSnapshot(a.volumeId);
          const { artifact } = await clone({ sourceVolumeId: a.volumeId, sourceSnapshotId: snapshotId });
          const outcome = await driver()
            .deleteSnapshot(a.volumeId, snapshotId, { operationId: newId("op") })
            .then(
              () => "deleted",
              (e: unknown) => codeOf(e),
            );
          expect(["deleted", "failed_precondition"]).toContain(outcome);
          if (outcome === "failed_precondition") expect(await snapshotCopies(a.volumeId, snapshotId)).toBe(1);
          expect(await readsAs(artifact.volumeId)).toBe("0xa1");
        },
      );
    });

    describe("flatten", () => {
      test(
        `flatten of a clone keeps its data, and repeated ${REPEAT} times converges`,
        ["clones", "flatten"],
        async () => {
          const a = await createVolume();
          const snapshotId = await cloneSource(a.volumeId);
          const c = (
            await clone({
              sourceVolumeId: a.volumeId,
              ...(snapshotId ? { sourceSnapshotId: snapshotId } : {}),
            })
          ).artifact;
          const operationId = newId("op");
          for (let i = 0; i < REPEAT; i++) {
            const r = await driver().flattenVolume(c.volumeId, { operationId });
            expect(r).toMatchObject({ volumeId: c.volumeId, sizeBytes: VOLUME_SIZE, format });
          }
          expect(await copiesOf(c.volumeId)).toBe(1);
          expect(await readsAs(c.volumeId)).toBe("0xa1");
          // Still two independent volumes after the flatten, both ways.
          await fill(a.volumeId, PATTERN_D);
          await fill(c.volumeId, PATTERN_C);
          expect(await readsAs(a.volumeId)).toBe("0xd4");
          expect(await readsAs(c.volumeId)).toBe("0xc3");
        },
      );

      test(
        "after flatten, the clone's snapshot and source can go and the clone keeps its data",
        ["snapshots", "clones", "flatten"],
        async () => {
          const a = await createVolume();
          await fill(a.volumeId, PATTERN_A);
          const snapshotId = await createSnapshot(a.volumeId);
          const c = (await clone({ sourceVolumeId: a.volumeId, sourceSnapshotId: snapshotId })).artifact;
          await driver().flattenVolume(c.volumeId, { operationId: newId("op") });
          expect(
            (await driver().deleteSnapshot(a.volumeId, snapshotId, { operationId: newId("op") })).existed,
          ).toBe(true);
          expect((await driver().deleteVolume(a.volumeId)).existed).toBe(true);
          expect(await readsAs(c.volumeId)).toBe("0xa1");
        },
      );

      test("flatten of a volume that has no source converges and keeps the data", ["flatten"], async () => {
        const a = await createVolume();
        await fill(a.volumeId, PATTERN_A);
        for (let i = 0; i < 2; i++) {
          const r = await driver().flattenVolume(a.volumeId, { operationId: newId("op") });
          expect(r).toMatchObject({ volumeId: a.volumeId, sizeBytes: VOLUME_SIZE });
        }
        expect(await readsAs(a.volumeId)).toBe("0xa1");
      });

      test("flatten of a missing volume is not_found", ["flatten"], async () => {
        expect(await errorCode(driver().flattenVolume(newId("vol"), { operationId: newId("op") }))).toBe(
          "not_found",
        );
      });
    });

    describe("wipe", () => {
      for (const mode of ["none", "zero", "discard"] as const) {
        const name = `delete with wipe ${mode} leaves no artefact, and repeating it converges`;
        const reason =
          target.skipReason ??
          (caps.wipe.includes(mode)
            ? undefined
            : `capability wipe does not include ${mode} for ${target.kind}`);
        if (reason !== undefined) {
          it.skip(`${name} [skipped: ${reason}]`, () => undefined);
          continue;
        }
        it(
          name,
          async () => {
            const a = await createVolume();
            await fill(a.volumeId, PATTERN_A);
            // A throttle well above the volume size per second: exercised, without slowing the suite.
            const opts = { operationId: newId("op"), wipe: mode, wipeBytesPerSecond: 1024 * 1024 * 1024 };
            expect(await driver().deleteVolume(a.volumeId, opts)).toEqual({ existed: true });
            expect(await driver().info(a.volumeId)).toBeUndefined();
            expect(await copiesOf(a.volumeId)).toBe(0);
            expect(await driver().deleteVolume(a.volumeId, opts)).toEqual({ existed: false });
            // The id is free again, and what comes back under it holds none of the old data.
            await driver().createVolume({
              volumeId: a.volumeId,
              operationId: newId("op"),
              sizeBytes: VOLUME_SIZE,
              format,
            });
            expect(await holds(a.volumeId, PATTERN_A)).toBe(false);
          },
          TEST_TIMEOUT_MS,
        );
      }
    });

    describe("leaks", () => {
      test(
        "every test above left the pool as it found it: no volumes, nothing new as foreign",
        [],
        async () => {
          const { volumes, foreign } = await driver().list();
          expect(volumes.map((v) => v.volumeId)).toEqual([]);
          expect(foreign).toEqual(foreignAtStart());
          expect((await driver().capacity()).provisionedBytes).toBe(0n);
        },
      );
    });
  });
}

function codeOf(e: unknown): string {
  const code = (e as { code?: unknown } | undefined)?.code;
  return typeof code === "string" ? code : `not a StowageError: ${String(e)}`;
}

/** The error code a call failed with; a call that succeeds fails the test with what it returned. */
async function errorCode(p: Promise<unknown>): Promise<string> {
  return p.then(
    (v) => `resolved (${JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x))})`,
    (e: unknown) => codeOf(e),
  );
}
