import { createHash, randomBytes } from "node:crypto";
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { readdir, readFile, stat, truncate, writeFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { newId } from "@stowage/core";
import {
  createLoopVg,
  freePort,
  inKernelVm,
  type LoopVg,
  makeTempDir,
  type Service,
  sleep,
  spawnService,
  startTgtd,
  type TempDir,
  type TgtdService,
  tgtAvailable,
} from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { PoolDriver, VolumeArtifact } from "../driver.js";
import { createLvmDriver } from "../lvm/index.js";
import { LVM_NO_UDEV_CONFIG, lvmToolEnv } from "../lvm/layout.js";
import { createToolRunner, ToolError, type ToolInvocationEvent } from "../runner.js";
import { type IscsiExport, iqnForVolume, isInitiatorName } from "./export.js";
import { createTgtExporter, type TgtExporter } from "./exporter.js";

/**
 * An LVM volume exported by tgt as a block device and logged into with the kernel's own iSCSI initiator
 * (open-iscsi), in the kernel VM: the host kernel has neither device-mapper (no LV to export) nor iscsi_tcp.
 * Real parts throughout: a VG on a loop device, the LVM driver's volumes, the tgt exporter on a private tgtd on
 * 127.0.0.1, iscsid and iscsiadm. The guest's initiator name is the one guest-vitest.sh writes into
 * /etc/iscsi/initiatorname.iscsi (in the guest's RAM overlay). Checked: discovery, login, the /dev/sdX the
 * session attaches (found through /sys/class/iscsi_session, there is no udev for /dev/disk/by-path), data
 * written through it with O_DIRECT and read on the LV (sha256), and the other way; CHAP added to the live
 * export (no credentials and a wrong secret refused, the secret never in an argv the runner reports nor in a
 * daemon's log); after logout and unexport the login is refused and discovery no longer lists the target,
 * and a target whose ACL names another host is neither listed to the guest nor open to it.
 * One LV and one start of everything (beforeAll) for the three steps: each spawn costs 0.1-0.8 s under TCG.
 */

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const TIMEOUT = 180_000;
/**
 * How long a daemon may take to answer, and a disk to appear after a login: under TCG, with the other VM
 * suites' workers starting beside this one, tgtd once did not answer its first tgtadm within startTgtd's
 * default 10 s.
 */
const SLOW_START_MS = 60_000;

function onPath(tool: string): boolean {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/sbin"];
  return dirs.some((d) => {
    if (d === "") return false;
    try {
      accessSync(join(d, tool), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

const INITIATOR_NAME_FILE = "/etc/iscsi/initiatorname.iscsi";

function guestInitiatorName(): string | undefined {
  try {
    return /^InitiatorName=(\S+)\s*$/m.exec(readFileSync(INITIATOR_NAME_FILE, "utf8"))?.[1];
  } catch {
    return undefined;
  }
}

function skipReason(): string | undefined {
  if (!inKernelVm()) {
    return "this kernel has no device-mapper and no iSCSI initiator (iscsi_tcp); this suite runs in the kernel VM (scripts/vm-test.sh, the vm step of npm test)";
  }
  const tgt = tgtAvailable();
  if (!tgt.ok) return tgt.reason;
  if (!onPath("iscsiadm") || !onPath("iscsid")) {
    return "open-iscsi is not installed on the host, whose packages the guest runs (apt-get install -y --no-install-recommends open-iscsi)";
  }
  if (!existsSync("/sys/module/iscsi_tcp")) {
    return "the guest has no iscsi_tcp module loaded (packages/testkit/vm/guest-vitest.sh loads it)";
  }
  const name = guestInitiatorName();
  if (name === undefined || !isInitiatorName(name)) {
    return `the guest has no valid initiator name in ${INITIATOR_NAME_FILE} (packages/testkit/vm/guest-vitest.sh writes it)`;
  }
  return undefined;
}

const skip = skipReason();
const title = skip
  ? `tgt exporter with the kernel iSCSI initiator in the kernel VM [skipped: ${skip}]`
  : "tgt exporter with the kernel iSCSI initiator in the kernel VM";

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

interface Run {
  exitCode: number;
  stdout: string;
  stderr: string;
}

describe.skipIf(skip !== undefined)(title, () => {
  let tmp: TempDir;
  let vg: LoopVg;
  let driver: PoolDriver;
  let tgtd: TgtdService;
  let iscsid: Service;
  let exporter: TgtExporter;
  let portal: string;
  let vol: VolumeArtifact;
  /**
   * A second export (a small file) for another host only, so that tgtd still answers logins once the LV's
   * export is gone, and the guest meets a target whose ACL it is not on.
   */
  let other: IscsiExport;
  const initiator = guestInitiatorName() ?? "";
  // tgt takes control ports up to 32767; one per test process.
  const controlPort = 20_000 + (process.pid % 12_000);
  const chap = { username: "stowage-vm-chap", secret: randomBytes(12).toString("hex") };
  const wrongSecret = randomBytes(12).toString("hex");
  /** Every tool run of the exporter and of the initiator side, as logs and metrics would see it. */
  const events: ToolInvocationEvent[] = [];
  const runner = createToolRunner({ onInvocation: (e) => events.push(e), defaultTimeoutMs: 60_000 });

  const iqn = () => iqnForVolume(vol.volumeId);
  const exportOfLv = (withChap = false): IscsiExport => ({
    volumeId: vol.volumeId,
    backing: { type: "block", path: vol.path },
    allowed: [{ initiatorIqn: initiator, address: "127.0.0.1" }],
    ...(withChap ? { chap } : {}),
  });

  /** A tool run whose failure is an answer, not an error: the exit code and stderr either way. */
  async function tool(name: string, args: string[], secretArgs: string[] = []): Promise<Run> {
    try {
      const r = await runner.run(name, args, { secretArgs, timeoutMs: 60_000 });
      return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
    } catch (e) {
      if (e instanceof ToolError && e.exitCode !== undefined) {
        return { exitCode: e.exitCode, stdout: "", stderr: e.stderr };
      }
      throw e;
    }
  }

  const node = (iqn: string, ...rest: string[]) => ["-m", "node", "-T", iqn, "-p", portal, ...rest];

  /**
   * SendTargets discovery as the guest's initiator: the targets tgtd shows it (its ACL applies here too).
   * Discovery also rewrites the portal's node records: a record of a target no longer shown is deleted.
   */
  async function discover(): Promise<string[]> {
    const r = await tool("iscsiadm", ["-m", "discovery", "-t", "sendtargets", "-p", portal]);
    // 21: no records found, i.e. tgtd showed this initiator no target.
    expect([0, 21], r.stderr).toContain(r.exitCode);
    return [...r.stdout.matchAll(/^\S+,\d+ (\S+)$/gm)].map((m) => m[1]!).sort();
  }

  const login = (target: string) => tool("iscsiadm", node(target, "--login"));
  const logout = (target: string) => tool("iscsiadm", node(target, "--logout"));
  const setAuth = (key: string, value: string, secret = false) =>
    tool("iscsiadm", node(iqn(), "-o", "update", "-n", key, "-v", value), secret ? [value] : []);

  /** The kernel's iSCSI sessions to `iqn` (their sysfs directories). */
  async function sessionsOf(iqn: string): Promise<string[]> {
    const base = "/sys/class/iscsi_session";
    const out: string[] = [];
    for (const s of await readdir(base).catch(() => [] as string[])) {
      const name = await readFile(join(base, s, "targetname"), "utf8").catch(() => "");
      if (name.trim() === iqn) out.push(join(base, s));
    }
    return out;
  }

  /**
   * The disk the session to `iqn` attached for LUN 1 (LUN 0 is tgt's controller): sessionN/device/targetH:C:T/
   * H:C:T:1/block/sdX. The SCSI scan after a login is asynchronous, so this waits for it (and for devtmpfs).
   */
  async function diskOf(iqn: string): Promise<string> {
    const ls = (dir: string) => readdir(dir).catch(() => [] as string[]);
    const deadline = Date.now() + SLOW_START_MS;
    for (;;) {
      for (const s of await sessionsOf(iqn)) {
        const dev = join(s, "device");
        for (const t of (await ls(dev)).filter((d) => d.startsWith("target"))) {
          for (const lun of (await ls(join(dev, t))).filter((d) => /^\d+:\d+:\d+:1$/.test(d))) {
            const [disk] = await ls(join(dev, t, lun, "block"));
            if (disk && (await stat(`/dev/${disk}`).catch(() => undefined))?.isBlockDevice()) {
              return `/dev/${disk}`;
            }
          }
        }
      }
      if (Date.now() > deadline) {
        throw new Error(`no disk attached for ${iqn} within ${SLOW_START_MS / 1000} s of the login`);
      }
      await sleep(100);
    }
  }

  async function diskBytes(dev: string): Promise<number> {
    const sectors = await readFile(`/sys/block/${dev.replace(/^\/dev\//, "")}/size`, "utf8");
    return Number(sectors.trim()) * 512;
  }

  /** Writes `data` at `offsetMiB` into `dev` with O_DIRECT, then a cache flush (SYNCHRONIZE CACHE on a disk). */
  async function writeDirect(dev: string, offsetMiB: number, data: Uint8Array): Promise<void> {
    const file = join(tmp.path, `pattern-${randomBytes(4).toString("hex")}`);
    await writeFile(file, data);
    const r = await tool("dd", [
      `if=${file}`,
      `of=${dev}`,
      "bs=1M",
      `seek=${offsetMiB}`,
      "oflag=direct",
      "conv=fsync,notrunc",
      "status=none",
    ]);
    expect(r.exitCode, r.stderr).toBe(0);
  }

  /** `lengthMiB` MiB of `dev` from `offsetMiB`, read with O_DIRECT (not from this side's page cache). */
  async function readDirect(dev: string, offsetMiB: number, lengthMiB: number): Promise<Buffer> {
    const file = join(tmp.path, `read-${randomBytes(4).toString("hex")}`);
    const r = await tool("dd", [
      `if=${dev}`,
      `of=${file}`,
      "bs=1M",
      `skip=${offsetMiB}`,
      `count=${lengthMiB}`,
      "iflag=direct",
      "status=none",
    ]);
    expect(r.exitCode, r.stderr).toBe(0);
    return readFile(file);
  }

  /**
   * Logs in to the LV's target, writes random data through the disk it attaches, checks that the LV holds
   * exactly that (and that the disk reads what is written on the LV), and logs out.
   */
  async function roundTrip(): Promise<void> {
    const l = await login(iqn());
    expect(l.exitCode, l.stderr).toBe(0);
    expect(l.stdout).toMatch(/Login to .* successful/);
    let disk: string | undefined;
    try {
      expect(await sessionsOf(iqn())).toHaveLength(1);
      // tgtd's side of the same session: the guest's name, from 127.0.0.1.
      const target = (await exporter.show()).targets.find((t) => t.iqn === iqn());
      expect(target?.sessions.map((x) => [x.initiator, x.addresses])).toEqual([[initiator, ["127.0.0.1"]]]);
      disk = await diskOf(iqn());
      expect(await diskBytes(disk)).toBe(SIZE);

      // Initiator -> LV: 4 MiB at 1 MiB through /dev/sdX, read back on the LV with O_DIRECT. The rest of the
      // LV must be as it was, so one sha256 over the whole LV checks the data and where it landed.
      const before = await readDirect(vol.path, 0, SIZE / MiB);
      const data = randomBytes(4 * MiB);
      await writeDirect(disk, 1, data);
      data.copy(before, 1 * MiB);
      expect(sha256(await readDirect(vol.path, 0, SIZE / MiB))).toBe(sha256(before));

      // LV -> initiator: 1 MiB written on the LV at 12 MiB is what the disk reads there.
      const back = randomBytes(MiB);
      await writeDirect(vol.path, 12, back);
      expect(sha256(await readDirect(disk, 12, 1))).toBe(sha256(back));
    } finally {
      // Logged out even when a check failed, so that the next test starts without a session.
      const out = await logout(iqn());
      expect(out.exitCode, out.stderr).toBe(0);
    }
    expect(await sessionsOf(iqn())).toEqual([]);
    expect(existsSync(disk)).toBe(false);
  }

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-tgt-vm-");
    portal = `127.0.0.1:${await freePort()}`;
    const otherFile = join(tmp.path, "other.raw");
    await writeFile(otherFile, "");
    await truncate(otherFile, MiB);
    other = {
      volumeId: newId("vol"),
      backing: { type: "file", path: otherFile },
      allowed: [{ initiatorIqn: "iqn.2026-12.io.stowage:host-elsewhere", address: "127.0.0.2" }],
    };
    // The three set-ups are independent, and each takes seconds under TCG: side by side.
    const lv = (async () => {
      vg = await createLoopVg({ activation: true, sizeBytes: 128n * BigInt(MiB) });
      driver = createLvmDriver({
        poolName: "vm-iscsi",
        vg: vg.vg,
        runner: createToolRunner({ env: lvmToolEnv({ lvmSystemDir: vg.lvmSystemDir }) }),
        lvmConfig: LVM_NO_UDEV_CONFIG,
      });
      const created = await driver.createVolume({
        volumeId: newId("vol"),
        sizeBytes: BigInt(SIZE),
        format: "raw",
        operationId: newId("op"),
      });
      vol = created.artifact;
    })();
    const target = (async () => {
      tgtd = await startTgtd({
        dir: join(tmp.path, "tgtd"),
        portal,
        controlPort,
        startTimeoutMs: SLOW_START_MS,
      });
      exporter = createTgtExporter({ runner, controlPort });
    })();
    const initiatorDaemon = (async () => {
      // iscsid in the foreground, in its own session and process group (on SIGTERM it signals its group).
      iscsid = await spawnService({
        name: "iscsid",
        command: "iscsid",
        args: ["-f"],
        logFile: join(tmp.path, "iscsid.log"),
        stopTimeoutMs: 5_000,
      });
      // Ready when iscsiadm reaches it: 0 (sessions) or 21 (none), not 20 (cannot connect to iscsid).
      const deadline = Date.now() + SLOW_START_MS;
      for (;;) {
        const r = await tool("iscsiadm", ["-m", "session"]);
        if (r.exitCode === 0 || r.exitCode === 21) break;
        if (!iscsid.running || Date.now() > deadline) {
          throw new Error(`iscsid did not come up: ${r.stderr} ${iscsid.logTail(20)}`);
        }
        await sleep(100);
      }
    })();
    // allSettled first: a failed set-up must not leave the others running unawaited into afterAll.
    const results = await Promise.allSettled([lv, target, initiatorDaemon]);
    for (const r of results) if (r.status === "rejected") throw r.reason;
  }, TIMEOUT);

  afterAll(async () => {
    // Best effort all the way, in the order that frees each thing before what it holds: the sessions, iscsid,
    // the targets (tgtd holds the LVs open), tgtd, the LVs, the VG and its loop device.
    for (const target of [vol, other].filter(Boolean).map((v) => iqnForVolume(v.volumeId))) {
      await tool("iscsiadm", node(target, "--logout")).catch(() => undefined);
      await tool("iscsiadm", node(target, "-o", "delete")).catch(() => undefined);
    }
    await iscsid?.stop().catch(() => undefined);
    await exporter?.apply([]).catch(() => undefined);
    await tgtd?.stop().catch(() => undefined);
    if (vol) await driver.deleteVolume(vol.volumeId).catch(() => undefined);
    await vg?.teardown();
    await tmp?.cleanup();
  }, TIMEOUT);

  it(
    "an LVM volume exported by tgt (block backing, ACL: the guest's name and 127.0.0.1) is discovered, logged into with the kernel initiator, and what /dev/sdX gets with O_DIRECT is on the LV (sha256)",
    async () => {
      expect((await stat(vol.path)).isBlockDevice()).toBe(true);
      const first = await exporter.apply([exportOfLv()]);
      expect(first.changed).toBe(true);
      expect(first.exports).toEqual([{ volumeId: vol.volumeId, iqn: iqn(), tid: 1 }]);
      // The same desired state again runs nothing.
      expect((await exporter.apply([exportOfLv()])).changed).toBe(false);
      const [target] = (await exporter.show()).targets;
      expect(target?.luns.find((l) => l.lun === 1)?.backingStorePath).toBe(vol.path);

      expect(await discover()).toEqual([iqn()]);
      await roundTrip();
    },
    TIMEOUT,
  );

  it(
    "with CHAP added to the export, a login without credentials or with a wrong secret is refused, one with the secret gets the disk; the secret is in no reported argv or daemon log",
    async () => {
      const r = await exporter.apply([exportOfLv(true)]);
      expect(r.changed).toBe(true);
      expect((await exporter.show()).targets[0]?.accounts).toEqual([chap.username]);

      // 24: iSCSI login failed due to authorization failure.
      const none = await login(iqn());
      expect([none.exitCode, none.stderr]).toEqual([24, expect.stringMatching(/authorization failure/)]);

      expect((await setAuth("node.session.auth.authmethod", "CHAP")).exitCode).toBe(0);
      expect((await setAuth("node.session.auth.username", chap.username)).exitCode).toBe(0);
      expect((await setAuth("node.session.auth.password", wrongSecret, true)).exitCode).toBe(0);
      const wrong = await login(iqn());
      expect([wrong.exitCode, wrong.stderr]).toEqual([24, expect.stringMatching(/authorization failure/)]);
      expect(await sessionsOf(iqn())).toEqual([]);

      expect((await setAuth("node.session.auth.password", chap.secret, true)).exitCode).toBe(0);
      await roundTrip();

      const reported = JSON.stringify(events);
      expect(reported).toContain("<redacted>");
      for (const s of [chap.secret, wrongSecret]) {
        expect(reported).not.toContain(s);
        expect(tgtd.logs()).not.toContain(s);
        expect(iscsid.logs()).not.toContain(s);
      }
    },
    TIMEOUT,
  );

  it(
    "after logout and unexport tgtd refuses the login and discovery no longer lists the target; a target whose ACL lacks the guest is neither listed to it nor open to it",
    async () => {
      const otherIqn = iqnForVolume(other.volumeId);
      // The LV's export goes, the other stays: tgtd still answers logins (with no target at all it would drop
      // them unanswered, and iscsiadm would retry for two minutes).
      const r = await exporter.apply([other]);
      expect(r.removed).toEqual([{ iqn: iqn(), tid: 1 }]);
      expect((await exporter.show()).accounts).toEqual([]);
      // The node record of the last discovery is still there: the login reaches tgtd, which refuses it
      // (19: a non-retryable login failure, tgtd's "target not found").
      const refused = await login(iqn());
      expect([refused.exitCode, refused.stderr]).toEqual([
        19,
        expect.stringMatching(/non-retryable iSCSI login failure/),
      ]);
      expect(await sessionsOf(iqn())).toEqual([]);
      // Neither the gone target nor the other host's is shown to the guest.
      expect(await discover()).toEqual([]);
      // A node record made by hand for the other host's target: tgtd refuses the guest's login by its ACL.
      expect((await tool("iscsiadm", node(otherIqn, "-o", "new"))).exitCode).toBe(0);
      const notOnAcl = await login(otherIqn);
      expect([notOnAcl.exitCode, notOnAcl.stderr]).toEqual([
        19,
        expect.stringMatching(/non-retryable iSCSI login failure/),
      ]);
      expect(await sessionsOf(otherIqn)).toEqual([]);

      expect((await exporter.apply([])).removed).toEqual([{ iqn: otherIqn, tid: 1 }]);
      expect((await exporter.show()).targets).toEqual([]);
    },
    TIMEOUT,
  );
});
