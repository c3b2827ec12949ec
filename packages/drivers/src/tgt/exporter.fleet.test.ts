import { createHash, randomBytes } from "node:crypto";
import { readFile, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  type Fleet,
  makeTempDir,
  netnsAvailable,
  startFleet,
  startTgtd,
  type TempDir,
  type TgtdService,
  tgtAvailable,
} from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createToolRunner, type ToolInvocationEvent } from "../runner.js";
import { type IscsiExport, iqnForVolume } from "./export.js";
import { createTgtExporter, type ExportKeeper, keepExported, type TgtExporter } from "./exporter.js";

/**
 * The exporter against a real tgtd on a three-host test fleet: tgtd on h1 exports a raw file volume to h2
 * (its initiator name and address); h2 writes through libiscsi (qemu-io, --image-opts), h1 reads the backing
 * file; h3 is refused; CHAP; tgtd killed and restarted; unexport; repeated applies.
 */
const netns = netnsAvailable();
const tgt = tgtAvailable();
const skip = !netns.ok ? netns.reason : !tgt.ok ? tgt.reason : undefined;
const title = skip ? `tgt exporter on the test fleet: SKIPPED, ${skip}` : "tgt exporter on the test fleet";
const tag = (process.pid % 100_000).toString(36);

const VOL = "vol-0192f0a0c0de7000800000000000beef";
const IQN = iqnForVolume(VOL);
const H1 = "203.0.113.11";
const PORTAL = `${H1}:3260`;
const SIZE = 8 * 1024 * 1024;
const hostIqn = (h: string) => `iqn.2026-12.io.stowage:host-${h}`;
const ADDR = { h2: "203.0.113.12", h3: "203.0.113.13" } as const;

describe.skipIf(skip !== undefined)(title, () => {
  let fleet: Fleet;
  let tmp: TempDir;
  let tgtd: TgtdService;
  let exporter: TgtExporter;
  let keeper: ExportKeeper | undefined;
  let backing: string;
  // tgt takes control ports up to 32767; one per test process
  const controlPort = 20_000 + (process.pid % 12_000);
  const secret = randomBytes(12).toString("hex");
  const chap = { username: `stowage-${tag}`, secret };
  /** Every tgtadm run the exporter made, as the agent's metrics and logs see it. */
  const events: ToolInvocationEvent[] = [];

  const startDaemon = () =>
    startTgtd({ dir: join(tmp.path, "tgtd"), netns: fleet.node("h1").netns, portal: PORTAL, controlPort });

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-tgt-fleet-");
    backing = join(tmp.path, `${VOL}.raw`);
    await writeFile(backing, "");
    await truncate(backing, SIZE);
    fleet = await startFleet({ prefix: `tg${tag}`, hosts: 3 });
    tgtd = await startDaemon();
    exporter = createTgtExporter({
      runner: createToolRunner({ onInvocation: (e) => events.push(e) }),
      controlPort,
    });
  });
  afterAll(async () => {
    await keeper?.stop();
    await tgtd?.stop();
    await fleet?.teardown();
    await tmp?.cleanup();
  });

  const exportTo = (over: Partial<IscsiExport> = {}): IscsiExport => ({
    volumeId: VOL,
    backing: { type: "file", path: backing },
    allowed: [{ initiatorIqn: hostIqn("h2"), address: ADDR.h2 }],
    ...over,
  });

  /** qemu-io on `host` with `name` as initiator, optionally CHAP with the secret passed by file. */
  async function qemuIo(
    host: string,
    name: string,
    command: string,
    auth?: { user: string; secret: string },
  ) {
    const opts = [
      "driver=raw",
      "file.driver=iscsi",
      "file.transport=tcp",
      `file.portal=${PORTAL}`,
      `file.target=${IQN}`,
      "file.lun=1",
      `file.initiator-name=${name}`,
    ];
    const args: string[] = [];
    if (auth) {
      const file = join(tmp.path, `secret-${randomBytes(4).toString("hex")}`);
      await writeFile(file, auth.secret, { mode: 0o600 });
      args.push("--object", `secret,id=sec0,file=${file}`);
      opts.push(`file.user=${auth.user}`, "file.password-secret=sec0");
    }
    args.push("--image-opts", opts.join(","), "-c", command);
    return fleet.exec(host, "qemu-io", args, { timeoutMs: 20_000 });
  }

  const expectRefused = (r: { exitCode: number; stderr: string; stdout: string }, why: RegExp) => {
    expect(r.exitCode, r.stdout + r.stderr).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(why);
  };

  it("exports a file volume to h2, which writes through libiscsi; h1 reads the same bytes in the backing file", async () => {
    const report = await exporter.apply([exportTo()]);
    expect(report.changed).toBe(true);
    expect(report.exports).toEqual([{ volumeId: VOL, iqn: IQN, tid: 1 }]);

    const w = await qemuIo("h2", hostIqn("h2"), "write -P 0xa5 0 1M");
    expect(w.exitCode, w.stderr).toBe(0);
    const w2 = await qemuIo("h2", hostIqn("h2"), "write -P 0x3c 5M 512k");
    expect(w2.exitCode, w2.stderr).toBe(0);

    const expected = Buffer.alloc(SIZE);
    expected.fill(0xa5, 0, 1024 * 1024);
    expected.fill(0x3c, 5 * 1024 * 1024, 5 * 1024 * 1024 + 512 * 1024);
    const sum = await fleet.exec("h1", "sha256sum", [backing]);
    expect(sum.stdout.split(" ")[0]).toBe(createHash("sha256").update(expected).digest("hex"));
    expect(
      createHash("sha256")
        .update(await readFile(backing))
        .digest("hex"),
    ).toBe(sum.stdout.split(" ")[0]);
  });

  it("refuses h3, which is not on the ACL", async () => {
    expectRefused(await qemuIo("h3", hostIqn("h3"), "read 0 4k"), /Target not found\(515\)/);
  });

  it("documents tgt's ACL rule: either the address or the name admits a login (tgt cannot require both)", async () => {
    // h3 claiming h2's name gets in: the name is the initiator's own claim. CHAP (below) is what authenticates.
    expect((await qemuIo("h3", hostIqn("h2"), "read 0 4k")).exitCode).toBe(0);
    // and h2's address with any name
    expect((await qemuIo("h2", hostIqn("someone"), "read 0 4k")).exitCode).toBe(0);
  });

  it("with CHAP: no secret and a wrong secret are refused, the right one works", async () => {
    const report = await exporter.apply([exportTo({ chap })]);
    expect(report.actions).toContain(`new-account ${chap.username}`);
    expect(JSON.stringify(report)).not.toContain(secret);

    expectRefused(await qemuIo("h2", hostIqn("h2"), "read 0 4k"), /Authentication failure/);
    expectRefused(
      await qemuIo("h2", hostIqn("h2"), "read 0 4k", { user: chap.username, secret: `${secret}x` }),
      /Authentication failure/,
    );
    const ok = await qemuIo("h2", hostIqn("h2"), "read -P 0xa5 0 1M", { user: chap.username, secret });
    expect(ok.exitCode, ok.stderr).toBe(0);
    // h3 is still refused by the ACL, even with the secret
    expectRefused(
      await qemuIo("h3", hostIqn("h3"), "read 0 4k", { user: chap.username, secret }),
      /Target not found/,
    );
    expect((await exporter.apply([exportTo({ chap })])).changed).toBe(false);
  });

  it("puts the export back within 30 s after tgtd is killed -9 and restarted, with no call", async () => {
    let desired: IscsiExport[] = [exportTo({ chap })];
    keeper = keepExported(exporter, () => desired, { intervalMs: 2_000, retryMs: 500 });
    await keeper.applyNow();

    await tgtd.kill();
    const t0 = Date.now();
    expect((await tgtd.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"])).exitCode).not.toBe(0);
    tgtd = await startDaemon();
    // A fresh tgtd has nothing:
    const auth = { user: chap.username, secret };
    let back = false;
    while (Date.now() - t0 < 30_000) {
      const r = await qemuIo("h2", hostIqn("h2"), "read -P 0xa5 0 1M", auth);
      if (r.exitCode === 0) {
        back = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 300));
    }
    expect(back).toBe(true);
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(keeper.lastReport?.changed).toBe(true);
    // and CHAP came back with it
    expectRefused(await qemuIo("h2", hostIqn("h2"), "read 0 4k"), /Authentication failure/);

    // unexport: apply([]) removes the target and h2 is refused
    desired = [];
    const gone = await keeper.applyNow();
    expect(gone.removed).toEqual([{ iqn: IQN, tid: 1 }]);
    expect(gone.actions).toContain(`delete-account ${chap.username}`);
    await keeper.stop();
    // A tgtd with no target at all drops every login ("Can not reconnect right now"); with other targets
    // left it answers "Target not found(515)" (the last test checks that case).
    expectRefused(await qemuIo("h2", hostIqn("h2"), "read 0 4k", auth), /Target not found|Can not reconnect/);
    const discovery = await fleet.exec("h2", "iscsi-ls", ["-i", hostIqn("h2"), `iscsi://${PORTAL}`]);
    expect(discovery.stdout).not.toContain(IQN);
    expect((await exporter.show()).targets).toEqual([]);
    expect((await exporter.show()).accounts).toEqual([]);
  });

  it("after an agent restart (a new exporter) sets each CHAP secret once more, and rotates a secret", async () => {
    await exporter.apply([exportTo({ chap })]);
    const restarted = createTgtExporter({ runner: createToolRunner(), controlPort });
    const once = await restarted.apply([exportTo({ chap })]);
    expect(once.actions).toEqual(
      expect.arrayContaining([`delete-account ${chap.username}`, `new-account ${chap.username}`]),
    );
    expect((await restarted.apply([exportTo({ chap })])).changed).toBe(false);
    const auth = { user: chap.username, secret };
    expect((await qemuIo("h2", hostIqn("h2"), "read -P 0xa5 0 1M", auth)).exitCode).toBe(0);

    const rotated = { ...chap, secret: randomBytes(12).toString("hex") };
    expect((await restarted.apply([exportTo({ chap: rotated })])).changed).toBe(true);
    expectRefused(await qemuIo("h2", hostIqn("h2"), "read 0 4k", auth), /Authentication failure/);
    const ok = await qemuIo("h2", hostIqn("h2"), "read 0 4k", {
      user: chap.username,
      secret: rotated.secret,
    });
    expect(ok.exitCode, ok.stderr).toBe(0);
    await restarted.apply([]);
  });

  it("never let a CHAP secret out of the tool runner", () => {
    const seen = JSON.stringify(events);
    expect(events.some((e) => e.argv.includes("--password"))).toBe(true);
    expect(seen).toContain("<redacted>");
    expect(seen).not.toContain(secret);
  });

  it("10 applies of the same desired state converge to one target, and leave a foreign target alone", async () => {
    const foreign = "iqn.2024-01.local.test:not-ours";
    const made = await tgtd.tgtadm([
      "--lld",
      "iscsi",
      "--mode",
      "target",
      "--op",
      "new",
      "--tid",
      "1",
      "--targetname",
      foreign,
    ]);
    expect(made.exitCode, made.stderr).toBe(0);

    const reports = await Promise.all(Array.from({ length: 10 }, () => exporter.apply([exportTo({ chap })])));
    expect(reports.filter((r) => r.changed)).toHaveLength(1);
    expect(reports.every((r) => r.exports[0]!.tid === 2)).toBe(true);

    const show = await tgtd.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    expect([...show.stdout.matchAll(/^Target \d+: (.+)$/gm)].map((m) => m[1])).toEqual([foreign, IQN]);
    const ok = await qemuIo("h2", hostIqn("h2"), "read -P 0xa5 0 1M", { user: chap.username, secret });
    expect(ok.exitCode, ok.stderr).toBe(0);

    await exporter.apply([]);
    const after = await tgtd.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    expect([...after.stdout.matchAll(/^Target \d+: (.+)$/gm)].map((m) => m[1])).toEqual([foreign]);
    expectRefused(
      await qemuIo("h2", hostIqn("h2"), "read 0 4k", { user: chap.username, secret }),
      /Target not found\(515\)/,
    );
  });
});
