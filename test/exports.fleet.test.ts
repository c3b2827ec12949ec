import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import {
  CEPH_INSTALL_HINT,
  type CephCluster,
  cephAvailable,
  type ExecResult,
  fleetHostAddress,
  netnsAvailable,
  startCeph,
  startTgtd,
  type TgtdService,
  tgtAvailable,
} from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type FleetCluster, type ProbeResult, startFleetCluster } from "./support/fleet.js";

/**
 * Issue 12's iSCSI Show through the whole stack, on a secure three-host fleet (TLS, tokens, per-agent NATS
 * credentials): `stowctl volume export` of a dir volume on h1 to h2 with CHAP; h2 fetches the CHAP secret with
 * its own certificate (GetExportCredentials) and writes through libiscsi (qemu-io --image-opts, as qemu does when
 * libvirt attaches the <disk> that `stowctl volume xml --host h2` prints); h1's file holds the same bytes; h3,
 * off the ACL, is refused, and so is a wrong secret; tgtd on h1 killed -9 and started again gets the export back
 * from the agent within 30 s with no API call; an update moves the ACL; ten repeats converge to one target;
 * unexport refuses h2; no secret in any log or audit row.
 */
const netns = netnsAvailable();
const tgt = tgtAvailable();
const skip = !netns.ok ? netns.reason : !tgt.ok ? tgt.reason : undefined;
const title = skip ? `exports on the test fleet: SKIPPED, ${skip}` : "exports on the test fleet (secure)";
// Ceph runs on h1 for the RBD grants; without it those tests say so and the iSCSI ones still run.
const noCeph = cephAvailable() ? undefined : `no Ceph here (${CEPH_INSTALL_HINT})`;
const tag = (process.pid % 100_000).toString(36);

const H1 = fleetHostAddress(1);
const PORTAL = `${H1}:3260`;
const MiB = 1024 * 1024;
const iqnOf = (h: string) => `iqn.2026-12.test.stowage:${h}`;
const run = promisify(execFile);

interface ExportJson {
  id: string;
  volumeId: string;
  kind: string;
  state: string;
  hostId: string;
  uri?: string;
  allowedHostIds?: string[];
  chapUser?: string;
}

describe.skipIf(skip !== undefined)(title, () => {
  let c: FleetCluster;
  let tgtd: TgtdService;
  let ceph: CephCluster | undefined;
  const controlPort = 20_000 + (process.pid % 12_000);
  const secretsDir = mkdtempSync(join(tmpdir(), "stowage-export-secrets-"));
  let volumeId = "";
  let hostPath = "";
  let exp: ExportJson;
  let iqn = "";
  let lun = 1;
  const pattern = randomBytes(MiB);

  const startDaemon = () =>
    startTgtd({
      dir: join(c?.dir ?? secretsDir, "tgtd"),
      netns: c.fleet.node("h1").netns,
      portal: PORTAL,
      controlPort,
    });

  /** The CHAP secret of the export as `host` gets it (its certificate), in a 0600 file; or the refusal. */
  const credentials = async (host: string, exportId = exp.id) => {
    const secretFile = join(secretsDir, `${host}-${randomBytes(3).toString("hex")}`);
    const r = await c.probe(host, {
      op: "export-credentials",
      url: c.url,
      ca: c.caFile,
      stateDir: join(c.dir, "hosts", host, "state"),
      exportId,
      secretFile,
    });
    return { ...r, secretFile } as ProbeResult & {
      secretFile: string;
      cephxUser?: string;
      chapUser?: string;
    };
  };

  /** qemu-io on `host` through libiscsi with its own initiator name and, when given, CHAP from a file. */
  const qemuIo = (
    host: string,
    command: string,
    chap?: { user: string; secretFile: string },
  ): Promise<ExecResult> => {
    const opts = [
      "driver=raw",
      "file.driver=iscsi",
      "file.transport=tcp",
      `file.portal=${PORTAL}`,
      `file.target=${iqn}`,
      `file.lun=${lun}`,
      `file.initiator-name=${iqnOf(host)}`,
    ];
    const args: string[] = [];
    if (chap) {
      args.push("--object", `secret,id=sec0,file=${chap.secretFile}`);
      opts.push(`file.user=${chap.user}`, "file.password-secret=sec0");
    }
    args.push("--image-opts", opts.join(","), "-c", command);
    return c.fleet.exec(host, "qemu-io", args, { timeoutMs: 20_000 });
  };
  const works = (r: ExecResult) => r.exitCode === 0 && !/fail|error|refused/i.test(r.stdout + r.stderr);
  const targets = async () => {
    const r = await tgtd.tgtadm(["--lld", "iscsi", "--mode", "target", "--op", "show"]);
    return [...r.stdout.matchAll(/^Target \d+: (\S+)$/gm)].map((m) => m[1]);
  };
  /** virt-xml-validate on a <disk> element inside a minimal domain (libvirt-clients with its schemas). */
  const validateDisk = async (xml: string, file: string) => {
    const domain = join(secretsDir, file);
    writeFileSync(
      domain,
      `<domain type='kvm'><name>check</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os><devices>${xml}</devices></domain>`,
    );
    await run("virt-xml-validate", [domain, "domain"]);
  };
  const getExport = () => c.stowctlJson<ExportJson>(["export", "get", exp.id]);
  const waitFor = async (what: string, ok: () => Promise<boolean>, ms: number) => {
    const until = Date.now() + ms;
    for (;;) {
      if (await ok()) return Date.now();
      if (Date.now() > until) throw new Error(`${what}: not within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 500));
    }
  };

  beforeAll(async () => {
    c = await startFleetCluster({
      prefix: `ex${tag}`,
      hosts: 3,
      secure: true,
      beforeAgents: async (fleet, dir) => {
        tgtd = await startTgtd({
          dir: join(dir, "tgtd"),
          netns: fleet.node("h1").netns,
          portal: PORTAL,
          controlPort,
        });
        if (!noCeph)
          ceph = await startCeph({
            netns: fleet.node("h1").netns,
            address: H1,
            // bluestore: its OSD reports a device size, so the pool has a capacity without a ceph-mgr.
            osdSizeBytes: 2 * 1024 ** 3,
          });
        return [tgtd];
      },
      agentConfig: (name, { defaultPool }) => ({
        initiatorName: iqnOf(name),
        ...(name === "h1" ? { iscsiPortal: PORTAL, tgtControlPort: controlPort } : {}),
        ...(name === "h1" && ceph
          ? {
              pools: [
                defaultPool,
                {
                  name: "ceph",
                  kind: "rbd",
                  cephPool: ceph.pool,
                  cephConf: ceph.conf,
                  cephUser: ceph.id,
                  keyring: ceph.keyring,
                },
              ],
            }
          : {}),
      }),
    });
    const v = await c.stowctlJson<{ volume: { id: string } }>([
      "volume",
      "create",
      "shared-disk",
      "--size",
      "8M",
      "--format",
      "raw",
      // h1's dir pool, beside its rbd pool
      "--pool",
      "h1/default",
      "--wait",
    ]);
    volumeId = v.volume.id;
    hostPath = (await c.stowctlJson<{ hostPath: string }>(["volume", "get", volumeId])).hostPath;
  }, 180_000);
  afterAll(async () => {
    await tgtd?.stop(); // the one started again, which the cluster does not know
    await c?.stop();
    await ceph?.stop({ fast: true });
    rmSync(secretsDir, { recursive: true, force: true });
  });

  it("exports a dir volume to h2 with CHAP: h2 writes through libiscsi and h1's file holds the same bytes", async () => {
    exp = await c.stowctlJson<ExportJson>([
      "volume",
      "export",
      "shared-disk",
      "--allow",
      "h2",
      "--chap",
      "--wait",
    ]);
    expect(exp).toMatchObject({
      volumeId,
      kind: "iscsi",
      state: "active",
      hostId: "h1",
      allowedHostIds: ["h2"],
    });
    const m = /^iscsi:\/\/([^/]+)\/([^/]+)\/(\d+)$/.exec(exp.uri ?? "");
    expect(m?.[1]).toBe(PORTAL);
    iqn = m![2]!;
    lun = Number(m![3]);
    expect(iqn).toBe(`iqn.2026-12.io.stowage:${volumeId}`);

    const creds = await credentials("h2");
    expect(creds).toMatchObject({ ok: true, chapUser: exp.chapUser, secretLength: 16 });
    const chap = { user: exp.chapUser!, secretFile: creds.secretFile };
    const patternFile = join(secretsDir, "pattern");
    writeFileSync(patternFile, pattern);
    const w = await c.fleet.exec(
      "h2",
      "qemu-img",
      [
        "convert",
        "-n",
        "-f",
        "raw",
        "--object",
        `secret,id=sec0,file=${chap.secretFile}`,
        "--target-image-opts",
        patternFile,
        `driver=raw,file.driver=iscsi,file.transport=tcp,file.portal=${PORTAL},file.target=${iqn},file.lun=${lun},file.initiator-name=${iqnOf("h2")},file.user=${chap.user},file.password-secret=sec0`,
      ],
      { timeoutMs: 30_000 },
    );
    expect(w.exitCode, w.stderr).toBe(0);
    const onH1 = (await readFile(hostPath)).subarray(0, MiB);
    expect(createHash("sha256").update(onH1).digest("hex")).toBe(
      createHash("sha256").update(pattern).digest("hex"),
    );

    // The <disk> with which h2 attaches it passes libvirt's schema and names the CHAP secret by usage only.
    const xml = (await c.stowctl(["volume", "xml", "shared-disk", "--host", "h2"], { reject: true })).stdout;
    expect(xml).toContain(`<source protocol="iscsi" name="${iqn}/${lun}">`);
    expect(xml).toContain(`<iqn name="${iqnOf("h2")}"/>`);
    expect(xml).toContain(`usage="stowage-${exp.id}"`);
    expect(xml).not.toContain(readFileSync(chap.secretFile, "utf8"));
    await validateDisk(xml, "domain.xml");
  });

  it("refuses h3 (not on the ACL, no credentials) and a wrong CHAP secret", async () => {
    const creds = await credentials("h3");
    expect(creds).toMatchObject({ ok: false, code: "PermissionDenied" });
    const good = await credentials("h2");
    const stolen = { user: exp.chapUser!, secretFile: good.secretFile };
    expect(works(await qemuIo("h3", "read 0 4k", stolen))).toBe(false);
    const wrong = join(secretsDir, "wrong");
    writeFileSync(wrong, `${readFileSync(good.secretFile, "utf8")}x`, { mode: 0o600 });
    expect(works(await qemuIo("h2", "read 0 4k", { user: exp.chapUser!, secretFile: wrong }))).toBe(false);
    expect(works(await qemuIo("h2", "read 0 4k"))).toBe(false); // no CHAP at all
    expect(works(await qemuIo("h2", `read -P 0x${pattern[0]!.toString(16)} 0 1`, stolen))).toBe(true);
  });

  it("puts the export back by itself within 30 s after tgtd on h1 is killed and started again", async () => {
    const chap = { user: exp.chapUser!, secretFile: (await credentials("h2")).secretFile };
    await tgtd.kill();
    tgtd = await startDaemon();
    expect(await targets()).toEqual([]);
    const started = Date.now();
    await waitFor(
      "the export back on tgtd",
      async () => works(await qemuIo("h2", "read 0 4k", chap)),
      30_000,
    );
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(await targets()).toEqual([iqn]);
  });

  it("converges to one target when the same export is asked for ten times", async () => {
    for (let i = 0; i < 10; i++) {
      const again = await c.stowctlJson<ExportJson>([
        "volume",
        "export",
        "shared-disk",
        "--allow",
        "h2",
        "--chap",
      ]);
      expect(again.id).toBe(exp.id);
    }
    expect(await c.stowctlJson<ExportJson[]>(["export", "list", "--volume", "shared-disk"])).toHaveLength(1);
    expect(await targets()).toEqual([iqn]);
  });

  it("moves the ACL with an update: h3 in, h2 out", async () => {
    const moved = await c.stowctlJson<ExportJson>([
      "export",
      "update",
      exp.id,
      "--allow",
      "h3",
      "--disallow",
      "h2",
      "--wait",
    ]);
    expect(moved.allowedHostIds).toEqual(["h3"]);
    const h3 = await credentials("h3");
    expect(h3.ok).toBe(true);
    const chap3 = { user: exp.chapUser!, secretFile: h3.secretFile };
    await waitFor("h3 admitted", async () => works(await qemuIo("h3", "read 0 4k", chap3)), 15_000);
    expect(works(await qemuIo("h2", "read 0 4k", chap3))).toBe(false);
    expect((await credentials("h2")).ok).toBe(false);
    await c.stowctlJson(["export", "update", exp.id, "--allow", "h2", "--disallow", "h3", "--wait"]);
  });

  it("refuses bad export requests with clear errors and changes nothing", async () => {
    const before = await c.stowctlJson<ExportJson[]>(["export", "list"]);
    const refusals: [string[], RegExp][] = [
      [["volume", "export", "shared-disk", "--allow", "h9"], /host h9 not found/],
      [["volume", "export", "shared-disk", "--allow", "h1"], /serves this volume/],
      [["volume", "export", "shared-disk", "--allow", "h2", "--kind", "rbd"], /cannot be exported over rbd/],
      [["volume", "export", "no-such-volume", "--allow", "h2"], /not found/],
      [["volume", "export", "shared-disk", "--allow", "h3"], /already has iscsi export/],
      [["export", "get", "exp-00000000000000000000000000000000"], /not found/],
    ];
    for (const [args, message] of refusals) {
      const r = await c.stowctl(args);
      expect(r.exitCode, args.join(" ")).not.toBe(0);
      expect(r.stderr, args.join(" ")).toMatch(message);
    }
    expect(await c.stowctlJson<ExportJson[]>(["export", "list"])).toEqual(before);
    const del = await c.stowctl(["volume", "delete", "shared-disk"]);
    expect(del.exitCode).not.toBe(0);
    expect(del.stderr).toMatch(/is exported .*unexport it first/);
  });

  it("unexports: h2 is refused, the target is gone, and no secret is in any log or audit row", async () => {
    const chap = { user: exp.chapUser!, secretFile: (await credentials("h2")).secretFile };
    const secret = readFileSync(chap.secretFile, "utf8");
    expect(works(await qemuIo("h2", "read 0 4k", chap))).toBe(true);
    const r = await c.stowctl(["volume", "unexport", "shared-disk", "--wait"], { reject: true });
    expect(r.stdout).toMatch(/is deleted/);
    expect((await getExport()).state).toBe("deleted");
    expect(await targets()).toEqual([]);
    expect(works(await qemuIo("h2", "read 0 4k", chap))).toBe(false);
    expect((await credentials("h2")).ok).toBe(false);
    // A second unexport says there is nothing to do.
    expect((await c.stowctl(["volume", "unexport", "shared-disk"], { reject: true })).stdout).toMatch(
      /has no export/,
    );

    const logs = [
      join(c.dir, "controller.log"),
      ...c.agents.map((a) => join(c.dir, "hosts", a.name, "agent.log")),
    ];
    for (const f of logs) expect(readFileSync(f, "utf8"), f).not.toContain(secret);
    const audit = await c.stowctl(["audit", "list", "--limit", "500", "-o", "json"], { reject: true });
    expect(audit.stdout).toContain("GetExportCredentials");
    expect(audit.stdout).toContain("CreateExport");
    expect(audit.stdout).not.toContain(secret);
  });

  describe.skipIf(noCeph !== undefined)(
    noCeph ? `RBD grants: SKIPPED, ${noCeph}` : "RBD grants through the API",
    () => {
      let rbdExp: ExportJson;
      let image = "";
      const data = randomBytes(4 * MiB);
      /** Reads the image on `host` with a cephx user and key (a keyring of its own) and only the monitors. */
      const readAs = async (host: string, user: string, keyFile: string) => {
        const dir = mkdtempSync(join(secretsDir, `${host}-`));
        const m = /^rbd:\/\/([^/]+)\//.exec(rbdExp.uri ?? "")!;
        const mons = m[1]!
          .split(",")
          .map((x) => `v2:${x}`)
          .join(",");
        writeFileSync(join(dir, "ceph.conf"), `[global]\nmon host = ${mons}\n`);
        const key = readFileSync(keyFile, "utf8");
        writeFileSync(join(dir, "keyring"), `[client.${user}]\n\tkey = ${key}\n`, { mode: 0o600 });
        const out = join(dir, "image.raw");
        const spec = `rbd:${image}:id=${user}:keyring=${join(dir, "keyring")}:conf=${join(dir, "ceph.conf")}`;
        const r = await c.fleet.exec(host, "qemu-img", ["convert", "-f", "raw", "-O", "raw", spec, out], {
          timeoutMs: 60_000,
        });
        if (r.exitCode !== 0) return "";
        return createHash("sha256").update(readFileSync(out).subarray(0, data.length)).digest("hex");
      };

      it("grants h2 a cephx key of its own: h2 reads the image with it, h3 gets no key, and the <disk> validates", async () => {
        // The rbd pool's first health check runs when the agent starts; wait until it is healthy.
        await waitFor(
          "the rbd pool healthy",
          async () =>
            (await c.stowctlJson<{ healthy?: boolean }>(["pool", "get", "h1/ceph"])).healthy === true,
          20_000,
        ).catch(async (err) => {
          throw new Error(`${err.message}: ${(await c.stowctl(["pool", "get", "h1/ceph"])).stdout}`);
        });
        const v = await c.stowctlJson<{ volume: { id: string } }>([
          "volume",
          "create",
          "ceph-disk",
          "--size",
          "4M",
          "--format",
          "raw",
          "--pool",
          "h1/ceph",
          "--wait",
        ]);
        const vol = await c.stowctlJson<{ hostPath: string }>(["volume", "get", v.volume.id]);
        image = vol.hostPath.replace(/^rbd:/, "").split(":")[0]!;
        expect(image).toMatch(/^rbd\//);
        const src = join(secretsDir, "rbd-data");
        writeFileSync(src, data);
        const w = await c.fleet.exec("h1", "qemu-img", [
          ...["convert", "-n", "-f", "raw", "-O", "raw", src],
          `rbd:${image}:conf=${ceph!.conf}:id=${ceph!.id}:keyring=${ceph!.keyring}`,
        ]);
        expect(w.exitCode, w.stderr).toBe(0);

        rbdExp = await c.stowctlJson<ExportJson>([
          ...["volume", "export", "ceph-disk", "--kind", "rbd", "--allow", "h2", "--wait"],
        ]);
        expect(rbdExp).toMatchObject({ kind: "rbd", state: "active", allowedHostIds: ["h2"] });
        expect(rbdExp.uri).toMatch(new RegExp(`^rbd://${H1}:3300/`));
        const b = await credentials("h2", rbdExp.id);
        expect(b).toMatchObject({ ok: true, secretLength: 40 });
        const want = createHash("sha256").update(data).digest("hex");
        expect(await readAs("h2", String(b.cephxUser), b.secretFile)).toBe(want);
        expect(await credentials("h3", rbdExp.id)).toMatchObject({ ok: false, code: "PermissionDenied" });
        // h3 with h2's user name and a key of its own making is refused by Ceph.
        const forged = join(secretsDir, "forged-key");
        writeFileSync(forged, "AQBJ2lJlAAAAABAA1b3Vn3Vn3Vn3Vn3Vn3Vn3Vn3Vn3Vn3Q==", { mode: 0o600 });
        expect(await readAs("h3", String(b.cephxUser), forged)).toBe("");

        const xml = (await c.stowctl(["volume", "xml", "ceph-disk", "--host", "h2"], { reject: true }))
          .stdout;
        expect(xml).toContain(`<auth username="${b.cephxUser}">`);
        expect(xml).toContain(`<host name="${H1}" port="3300"/>`);
        expect(xml).not.toContain(readFileSync(b.secretFile, "utf8"));
        await validateDisk(xml, "rbd-domain.xml");
      });

      it("revokes: after unexport h2's key is refused", async () => {
        const b = await credentials("h2", rbdExp.id);
        const r = await c.stowctl(["volume", "unexport", "ceph-disk", "--wait"], { reject: true });
        expect(r.stdout).toMatch(/is deleted/);
        expect(await readAs("h2", String(b.cephxUser), b.secretFile)).toBe("");
      });
    },
  );
});
