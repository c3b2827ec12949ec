import { execFile } from "node:child_process";
import { createHash, randomBytes, randomInt } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  type Fleet,
  fleetHostAddress,
  makeTempDir,
  netnsAvailable,
  type QsdService,
  qsdAvailable,
  startFleet,
  startQemuStorageDaemon,
  type TempDir,
} from "@stowage/testkit";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

/**
 * Issue 13's live-migration data path as libvirt drives it under `virsh migrate --copy-storage-all`, played
 * by real QEMU block layers without a guest, on a two-host test fleet: on B (h2) a qemu-storage-daemon serves
 * the pre-created destination image over NBD on B's fleet address (what the destination QEMU does with
 * nbd-server-start/nbd-server-add); on A (h1) a qemu-storage-daemon holds the source and runs blockdev-mirror
 * (sync=full) into an NBD blockdev pointing at B, while a writer keeps writing to the source through a second
 * NBD export on A's own loopback (qemu-io inside A's namespace: the daemon holds the image, so nothing else may
 * open the file). After job-complete both whole disks are equal (qemu-img compare and a sha256 of the guest
 * view), for a raw and a qcow2 destination. Then the abort path issue 13 relies on: when B's daemon dies or
 * its export is removed, the mirror job ends with an error within seconds, A's daemon still answers, and
 * the source is untouched.
 */
const netns = netnsAvailable();
const qsd = qsdAvailable();
const skip = !netns.ok ? netns.reason : !qsd.ok ? qsd.reason : undefined;
const title = skip
  ? `migration data path (qemu-storage-daemon mirror over NBD): SKIPPED, ${skip}`
  : "migration data path (qemu-storage-daemon mirror over NBD between fleet hosts)";
const prefix = `mig${(process.pid % 100_000).toString(36)}`;

const run = promisify(execFile);
const MiB = 1024 * 1024;
const DISK = 64 * MiB;
const NBD_PORT = 10809;
const A_ADDR = fleetHostAddress(1);
const B_ADDR = fleetHostAddress(2);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

describe.skipIf(skip !== undefined)(title, () => {
  let fleet: Fleet;
  let tmp: TempDir;
  const daemons: QsdService[] = [];
  /** Random data files the writers take their bytes from (`qemu-io write -s FILE`). */
  const chunks: string[] = [];

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-migration-datapath-");
    fleet = await startFleet({ prefix, hosts: 2 });
    for (let i = 0; i < 4; i++) {
      const f = join(tmp.path, `chunk${i}`);
      writeFileSync(f, randomBytes(MiB));
      chunks.push(f);
    }
  });

  // Each test's daemons go with it, so a failing test leaves no port taken for the next.
  afterEach(async () => {
    for (const d of daemons.splice(0)) await d.stop();
  });

  afterAll(async () => {
    await fleet?.teardown();
    await tmp?.cleanup();
  });

  const start = async (opts: Parameters<typeof startQemuStorageDaemon>[0]) => {
    const d = await startQemuStorageDaemon(opts);
    daemons.push(d);
    return d;
  };

  /** Runs qemu-io with `commands` against NBD export `name` on A's loopback, inside A's namespace. */
  const qemuIoOnA = async (name: string, commands: string[]) => {
    const args = ["-f", "raw", `nbd://127.0.0.1:${NBD_PORT}/${name}`];
    for (const c of commands) args.push("-c", c);
    const r = await fleet.exec("h1", "qemu-io", args, { timeoutMs: 15_000 });
    if (r.exitCode !== 0 || /error|failed/i.test(r.stdout + r.stderr))
      throw new Error(`qemu-io on h1 (${commands.join("; ")}): exit ${r.exitCode}: ${r.stderr}${r.stdout}`);
  };

  /** `count` writes of random data (64 KiB to 1 MiB, 4 KiB aligned) at random places of the disk. */
  const randomWrites = (count: number) =>
    Array.from({ length: count }, () => {
      const len = randomInt(1, 17) * 64 * 1024;
      const off = randomInt(0, (DISK - len) / 4096 + 1) * 4096;
      return `write -q -s ${chunks[randomInt(0, chunks.length)]} ${off} ${len}`;
    });

  /** A writer that keeps writing through export `name` on A until stop() (which waits for its last round). */
  const startWriter = (name: string) => {
    let stopping = false;
    let rounds = 0;
    let failed: Error | undefined;
    const loop = (async () => {
      while (!stopping) {
        await qemuIoOnA(name, randomWrites(4));
        rounds++;
      }
    })();
    loop.catch((err: Error) => {
      failed = err;
    });
    return {
      /** Rounds done so far; throws once the writer has failed. */
      rounds: () => {
        if (failed) throw failed;
        return rounds;
      },
      async stop() {
        stopping = true;
        await loop;
        return rounds;
      },
    };
  };

  /** The guest view of an image (raw bytes of its virtual disk), through qemu-img convert. */
  const guestView = async (path: string, format: string) => {
    const out = `${path}.view-${randomBytes(3).toString("hex")}.raw`;
    await run("qemu-img", ["convert", "-f", format, "-O", "raw", path, out]);
    return readFileSync(out);
  };

  /** A source with 24 MiB of random data in places, and an empty destination of the same size and format. */
  const makeImages = async (name: string, format: "raw" | "qcow2") => {
    const src = join(tmp.path, `${name}-src.${format}`);
    const dst = join(tmp.path, `${name}-dst.${format}`);
    for (const p of [src, dst]) await run("qemu-img", ["create", "-q", "-f", format, p, String(DISK)]);
    const fill: string[] = ["-f", format, src];
    for (let i = 0; i < 24; i++)
      fill.push("-c", `write -q -s ${chunks[i % chunks.length]} ${(i * 5 + 1) * 512 * 1024} 1M`);
    await run("qemu-io", fill);
    return { src, dst };
  };

  for (const format of ["raw", "qcow2"] as const) {
    it(`mirrors a live ${format} source on A into B's ${format} destination over NBD; after job-complete both disks are equal`, async () => {
      const t0 = Date.now();
      const { src, dst } = await makeImages(`live-${format}`, format);
      // B: the destination served over NBD on its fleet address. The qcow2 case does it the way libvirt does
      // on the destination QEMU (nbd-server-start, nbd-server-add over QMP); the raw case from the command line.
      const b =
        format === "raw"
          ? await start({
              dir: join(tmp.path, `b-${format}`),
              netns: fleet.node("h2").netns,
              blockdevs: [{ id: "vda", path: dst, format }],
              nbd: { address: B_ADDR, port: NBD_PORT },
              exports: [{ id: "vda", node: "vda", writable: true }],
            })
          : await start({
              dir: join(tmp.path, `b-${format}`),
              netns: fleet.node("h2").netns,
              blockdevs: [{ id: "vda", path: dst, format }],
            });
      if (format === "qcow2") {
        await b.nbdServerStart({ address: B_ADDR, port: NBD_PORT });
        await b.nbdServerAdd({ node: "vda", writable: true });
      }
      // A: the source, plus the writer's export on A's loopback (reachable from A only).
      const a = await start({
        dir: join(tmp.path, `a-${format}`),
        netns: fleet.node("h1").netns,
        blockdevs: [{ id: "vda", path: src, format }],
        nbd: { address: "127.0.0.1", port: NBD_PORT },
        exports: [{ id: "guest", node: "vda", writable: true }],
      });
      // A reaches B's export over the fleet; A's writer export is on A's loopback only, not on its fleet address.
      expect((await fleet.connect("h1", B_ADDR, NBD_PORT)).ok).toBe(true);
      expect((await fleet.connect("h2", A_ADDR, NBD_PORT)).ok).toBe(false);

      const writer = startWriter("guest");
      await a.addNbdClient({ id: "mig", host: B_ADDR, port: NBD_PORT, exportName: "vda" });
      const tMirror = Date.now();
      // Slowed down until the writer has written during the bulk copy, then at full speed.
      await a.blockdevMirror({
        device: "vda",
        target: "mig",
        sync: "full",
        jobId: "mirror0",
        speed: 2 * MiB,
        bufSize: MiB,
      });
      const roundsAtStart = writer.rounds();
      while (writer.rounds() < roundsAtStart + 2) await sleep(20);
      const during = (await a.queryJobs())[0];
      expect(during?.status).toBe("running");
      expect(during?.["current-progress"]).toBeLessThan(during?.["total-progress"] ?? 0);
      await a.setJobSpeed("mirror0", 0);
      const ready = await a.waitJobReady("mirror0", 30_000);
      const tReady = Date.now();
      const roundsAtReady = writer.rounds();
      // Keep writing while the job is ready (every write is now copied to B as it happens).
      while (writer.rounds() < roundsAtReady + 3 || Date.now() - tReady < 1000) await sleep(50);
      const rounds = await writer.stop();
      // A last known write just before the switch-over: B must have it.
      const last = randomBytes(MiB);
      const lastFile = join(tmp.path, `last-${format}`);
      writeFileSync(lastFile, last);
      const lastOff = 40 * MiB + 4096;
      await qemuIoOnA("guest", [`write -q -s ${lastFile} ${lastOff} ${MiB}`]);
      await a.jobComplete("mirror0");
      const end = await a.waitJobConcluded("mirror0", 30_000);
      expect(end.error).toBeUndefined();
      expect(a.events("BLOCK_JOB_READY").map((e) => e.data?.device)).toContain("mirror0");
      // The switch-over: the source's users (here the guest's export) now write to B, as the source QEMU's
      // guest does until libvirt stops it; so the target node stays in use and A is simply stopped.
      const exportsNow = (await a.qmp("query-block-exports")) as { id: string; "node-name": string }[];
      expect(exportsNow.map((e) => [e.id, e["node-name"]])).toEqual([["guest", "mig"]]);
      await a.stop();
      await b.stop();

      const cmp = await run("qemu-img", ["compare", "-f", format, "-F", format, src, dst]);
      expect(cmp.stdout).toMatch(/Images are identical/);
      const [srcView, dstView] = [await guestView(src, format), await guestView(dst, format)];
      expect(dstView.length).toBe(DISK);
      expect(sha(dstView)).toBe(sha(srcView));
      expect(sha(dstView.subarray(lastOff, lastOff + MiB))).toBe(sha(last));
      expect(rounds).toBeGreaterThan(roundsAtReady); // writes happened while the mirror was ready
      console.log(
        `[migration-datapath] ${format}: ${DISK / MiB} MiB, ready after ${tReady - tMirror} ms (${ready["total-progress"]} bytes to copy), ` +
          `${rounds} writer rounds of 4 writes (${roundsAtReady - roundsAtStart} during the bulk copy, ${rounds - roundsAtReady} while ready), whole test ${Date.now() - t0} ms, sha256 ${sha(dstView).slice(0, 16)}`,
      );
    }, 60_000);
  }

  it("when B's daemon dies during the copy, the mirror ends with an I/O error within seconds, A still answers and the source is untouched", async () => {
    const { src, dst } = await makeImages("killed", "raw");
    const before = sha(readFileSync(src));
    const b = await start({
      dir: join(tmp.path, "b-killed"),
      netns: fleet.node("h2").netns,
      blockdevs: [{ id: "vda", path: dst, format: "raw" }],
      nbd: { address: B_ADDR, port: NBD_PORT },
      exports: [{ id: "vda", node: "vda" }],
    });
    const a = await start({
      dir: join(tmp.path, "a-killed"),
      netns: fleet.node("h1").netns,
      blockdevs: [{ id: "vda", path: src, format: "raw" }],
    });
    await a.addNbdClient({ id: "mig", host: B_ADDR, port: NBD_PORT, exportName: "vda" });
    // 4 MiB/s: the copy would take about 16 s, so it is surely under way when B goes.
    await a.blockdevMirror({
      device: "vda",
      target: "mig",
      sync: "full",
      jobId: "mirror1",
      speed: 4 * MiB,
      bufSize: MiB,
    });
    const t0 = Date.now();
    while (((await a.queryJobs())[0]?.["current-progress"] ?? 0) === 0) {
      if (Date.now() - t0 > 10_000) throw new Error("the mirror made no progress in 10 s");
      await sleep(50);
    }
    await b.kill();
    const tKill = Date.now();
    const end = await a.waitJobConcluded("mirror1", 15_000);
    const ms = Date.now() - tKill;
    expect(end.error).toMatch(/Input\/output error/);
    expect(ms).toBeLessThan(10_000);
    expect(end["current-progress"]).toBeLessThan(end["total-progress"]);
    expect(await a.queryJobs()).toEqual([]);
    await a.blockdevDel("mig");
    await a.stop();
    expect(sha(readFileSync(src))).toBe(before);
    console.log(`[migration-datapath] B killed mid-copy: the job failed ${ms} ms later: ${end.error}`);
  }, 60_000);

  it("when B's export is removed while the mirror is ready, the next write ends the job with an error", async () => {
    const { src, dst } = await makeImages("unexported", "raw");
    const b = await start({
      dir: join(tmp.path, "b-unexported"),
      netns: fleet.node("h2").netns,
      blockdevs: [{ id: "vda", path: dst, format: "raw" }],
      nbd: { address: B_ADDR, port: NBD_PORT },
      exports: [{ id: "vda", node: "vda" }],
    });
    const a = await start({
      dir: join(tmp.path, "a-unexported"),
      netns: fleet.node("h1").netns,
      blockdevs: [{ id: "vda", path: src, format: "raw" }],
      nbd: { address: "127.0.0.1", port: NBD_PORT },
      exports: [{ id: "guest", node: "vda" }],
    });
    await a.addNbdClient({ id: "mig", host: B_ADDR, port: NBD_PORT, exportName: "vda" });
    await a.blockdevMirror({ device: "vda", target: "mig", sync: "full", jobId: "mirror2" });
    await a.waitJobReady("mirror2", 30_000);
    await b.blockExportDel("vda");
    const tDel = Date.now();
    // The guest's write still succeeds on A; copying it to B fails, and so does the job.
    await qemuIoOnA("guest", randomWrites(2));
    const end = await a.waitJobConcluded("mirror2", 15_000);
    expect(end.error).toMatch(/Input\/output error/);
    await a.blockdevDel("mig");
    await a.stop();
    await b.stop();
    console.log(
      `[migration-datapath] B's export removed while ready: the job failed ${Date.now() - tDel} ms later: ${end.error}`,
    );
  }, 60_000);
});
