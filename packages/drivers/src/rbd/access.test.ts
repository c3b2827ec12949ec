import { createHash, randomBytes } from "node:crypto";
import { chmod, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { newCephxKey } from "@stowage/core";
import {
  CEPH_INSTALL_HINT,
  type CephCluster,
  cephAvailable,
  makeTempDir,
  startCeph,
  type TempDir,
} from "@stowage/testkit";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createToolRunner, ToolError, type ToolInvocationEvent } from "../runner.js";
import {
  type CephAdmin,
  cephMonitorAddresses,
  grantRbdAccess,
  listStowageCephxClients,
  rbdImageCaps,
  revokeRbdAccess,
} from "./access.js";

// Grants against a real one-node Ceph (one per file): B's own key reads the image it was granted, C's key
// (granted on another image) cannot open it, a revoked key is refused, and no key reaches an argv or an error.

describe("rbd access caps (pure)", () => {
  it("limit a plain image to its own objects, plus the pool objects an open reads", () => {
    const caps = rbdImageCaps([{ pool: "rbd", namespace: "", name: "stowage-vol-1", id: "abc123" }]);
    expect(caps.mon).toBe("profile rbd");
    expect(caps.osd.split(", ")).toEqual([
      "allow rwx pool=rbd object_prefix rbd_header.abc123",
      "allow rwx pool=rbd object_prefix rbd_data.abc123.",
      "allow rwx pool=rbd object_prefix rbd_object_map.abc123",
      "allow rx pool=rbd object_prefix rbd_id.stowage-vol-1",
      "allow rx pool=rbd object_prefix rbd_info",
      "allow rx pool=rbd object_prefix rbd_mirroring",
      "allow rx pool=rbd object_prefix rbd_directory",
    ]);
    expect(caps.osd).not.toMatch(/allow (rwx|rx|r|\*) pool=rbd(,|$)/);
  });

  it("give a clone read-only access to its ancestors, each in its own pool and namespace", () => {
    const caps = rbdImageCaps([
      { pool: "rbd", namespace: "ns", name: "child", id: "c1" },
      { pool: "base", namespace: "", id: "p1" },
    ]);
    expect(caps.osd).toContain("allow rwx pool=rbd namespace=ns object_prefix rbd_data.c1.");
    expect(caps.osd).toContain("allow rx pool=base object_prefix rbd_data.p1.");
    expect(caps.osd).toContain("allow rx pool=base object_prefix rbd_header.p1");
    expect(caps.osd).not.toMatch(/allow rwx pool=base/);
    expect(caps.osd).toContain("allow rx pool=rbd object_prefix rbd_info");
    expect(caps.osd).toContain("allow rx pool=rbd namespace=ns object_prefix rbd_directory");
  });
});

const avail = cephAvailable();
const CEPH_TEST = { timeout: 120_000 };
const MiB = 1024 * 1024;

describe.skipIf(!avail)(
  avail ? "rbd access grants (real Ceph)" : `rbd access grants: SKIPPED, no Ceph here (${CEPH_INSTALL_HINT})`,
  CEPH_TEST,
  () => {
    let ceph: CephCluster;
    let tmp: TempDir;
    let admin: CephAdmin;
    const events: ToolInvocationEvent[] = [];
    const errors: unknown[] = [];
    const keys: string[] = [];
    let data: Buffer;
    let sha: string;
    const imageA = "stowage-vol-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const imageB = "stowage-vol-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const userB = "stowage-0123456789abcdef0123456789abcdef-h2";
    const userC = "stowage-fedcba9876543210fedcba9876543210-h3";

    const key = () => {
      const k = newCephxKey();
      keys.push(k);
      return k;
    };
    const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    const adminRbd = (args: string[]) =>
      execa("rbd", ["--conf", ceph.conf, "--id", ceph.id, "--keyring", ceph.keyring, ...args], {
        stdin: "ignore",
      });
    /** What a client host does: its own keyring file (0600), then qemu-img reads the image through librbd. */
    const keyringFor = async (user: string, k: string) => {
      const file = join(tmp.path, `${user}.keyring`);
      await writeFile(file, `[client.${user}]\n\tkey = ${k}\n`, { mode: 0o600 });
      await chmod(file, 0o600);
      return file;
    };
    const readAs = async (user: string, k: string, image: string) => {
      const out = join(tmp.path, `${user}-${image}.raw`);
      const r = await execa(
        "qemu-img",
        [
          ...["convert", "-f", "raw", "-O", "raw"],
          `rbd:rbd/${image}:id=${user}:keyring=${await keyringFor(user, k)}:conf=${ceph.conf}`,
          out,
        ],
        { reject: false, stdin: "ignore", timeout: 60_000 },
      );
      return {
        ok: r.exitCode === 0,
        stderr: r.stderr,
        data: r.exitCode === 0 ? await readFile(out) : undefined,
      };
    };
    /** The admin's view of one client, or undefined. */
    const authGet = async (user: string) => {
      const r = await execa(
        "ceph",
        ["--conf", ceph.conf, "auth", "get", `client.${user}`, "--format", "json"],
        { reject: false, stdin: "ignore" },
      );
      if (r.exitCode !== 0) return undefined;
      return JSON.parse(r.stdout) as { entity: string; key: string; caps: Record<string, string> }[];
    };
    const attempt = async <T>(p: Promise<T>) => {
      try {
        return await p;
      } catch (e) {
        errors.push(e);
        throw e;
      }
    };

    beforeAll(async () => {
      tmp = await makeTempDir("stowage-rbd-access-");
      ceph = await startCeph({ store: "memstore", osdSizeBytes: 2 * 1024 ** 3 });
      admin = {
        runner: createToolRunner({ onInvocation: (e) => events.push(e) }),
        conn: { cephConf: ceph.conf, cephUser: ceph.id, keyring: ceph.keyring },
      };
      data = randomBytes(8 * MiB);
      sha = sha256(data);
      await writeFile(join(tmp.path, "data.raw"), data);
      for (const image of [imageA, imageB]) {
        await adminRbd(["create", "--size", "8M", "--no-progress", `rbd/${image}`]);
      }
      await execa("qemu-img", [
        ...["convert", "-n", "-f", "raw", "-O", "raw", join(tmp.path, "data.raw")],
        `rbd:rbd/${imageA}:conf=${ceph.conf}:id=admin:keyring=${ceph.keyring}`,
      ]);
    }, 120_000);
    afterAll(async () => {
      await ceph?.stop({ fast: true });
      await tmp?.cleanup();
    });

    it("lets B's own key (made by newCephxKey, imported by ceph) read the image it was granted, data intact", async () => {
      const kB = key();
      const g = await attempt(grantRbdAccess(admin, { pool: "rbd", image: imageA, user: userB, key: kB }));
      expect(g.user).toBe(userB);
      const shown = await authGet(userB);
      expect(shown?.[0]).toMatchObject({ entity: `client.${userB}`, key: kB, caps: g.caps });
      const r = await readAs(userB, kB, imageA);
      expect(r.stderr).toBe("");
      expect(r.ok).toBe(true);
      expect(sha256(r.data!)).toBe(sha);
      // And writes: qemu-io through librbd with the exclusive lock and the object map.
      const spec = `rbd:rbd/${imageA}:id=${userB}:keyring=${await keyringFor(userB, kB)}:conf=${ceph.conf}`;
      const w = await execa(
        "qemu-io",
        ["-f", "raw", "-c", "write -P 0x5a 4M 64k", "-c", "read -P 0x5a 4M 64k", spec],
        {
          reject: false,
          stdin: "ignore",
        },
      );
      expect(w.stdout).toMatch(/wrote 65536\/65536 bytes/);
      expect(w.stdout).not.toMatch(/Pattern verification failed/);
      expect(w.exitCode).toBe(0);
      // Put the data back, so the next tests read what was written first.
      data.fill(0x5a, 4 * MiB, 4 * MiB + 65536);
      sha = sha256(data);
    });

    it("refuses C's key, granted on another image, on this one", async () => {
      const kC = key();
      await attempt(grantRbdAccess(admin, { pool: "rbd", image: imageB, user: userC, key: kC }));
      // C reaches its own image...
      const own = await readAs(userC, kC, imageB);
      expect(own.ok).toBe(true);
      expect(own.data?.length).toBe(8 * MiB);
      // ...but not B's, and cannot list the pool.
      const other = await readAs(userC, kC, imageA);
      expect(other.ok).toBe(false);
      expect(other.stderr).toMatch(/Operation not permitted|Permission denied/);
      const ls = await execa(
        "rbd",
        ["--conf", ceph.conf, "--id", userC, "--keyring", await keyringFor(userC, kC), "ls", "rbd"],
        { reject: false, stdin: "ignore" },
      );
      expect(ls.exitCode).not.toBe(0);
      // A wrong key for B's user is refused too.
      expect((await readAs(userB, newCephxKey(), imageA)).ok).toBe(false);
    });

    it("converges a grant repeated 10 times to one client with one key; a new key replaces the old one", async () => {
      const kB = keys[0]!;
      for (let i = 0; i < 10; i++) {
        await attempt(grantRbdAccess(admin, { pool: "rbd", image: imageA, user: userB, key: kB }));
      }
      await Promise.all(
        Array.from({ length: 3 }, () =>
          attempt(grantRbdAccess(admin, { pool: "rbd", image: imageA, user: userB, key: kB })),
        ),
      );
      const shown = await authGet(userB);
      expect(shown).toHaveLength(1);
      expect(shown?.[0]?.key).toBe(kB);
      const listed = (await listStowageCephxClients(admin)).map((c) => c.user);
      expect(listed).toEqual([userB, userC]);
      expect(sha256((await readAs(userB, kB, imageA)).data!)).toBe(sha);

      const rotated = key();
      await attempt(grantRbdAccess(admin, { pool: "rbd", image: imageA, user: userB, key: rotated }));
      expect((await readAs(userB, kB, imageA)).ok).toBe(false);
      expect(sha256((await readAs(userB, rotated, imageA)).data!)).toBe(sha);
      await attempt(grantRbdAccess(admin, { pool: "rbd", image: imageA, user: userB, key: kB }));
    });

    it("lets a clone be read through its parent with image-level caps (read-only on the parent)", async () => {
      await adminRbd(["snap", "create", "--no-progress", `rbd/${imageA}@s1`]);
      await adminRbd(["snap", "protect", `rbd/${imageA}@s1`]);
      const clone = "stowage-vol-cccccccccccccccccccccccccccccccc";
      await adminRbd(["clone", `rbd/${imageA}@s1`, `rbd/${clone}`]);
      const user = "stowage-cccccccccccccccccccccccccccccccc-h2";
      const k = key();
      const g = await attempt(grantRbdAccess(admin, { pool: "rbd", image: clone, user, key: k }));
      const clauses = g.caps.osd.split(", ");
      // Read-write on the clone's data, read-only on its parent's.
      expect(clauses.filter((c) => c.startsWith("allow rwx") && c.includes("rbd_data."))).toHaveLength(1);
      expect(clauses.filter((c) => c.startsWith("allow rx") && c.includes("rbd_data."))).toHaveLength(1);
      const r = await readAs(user, k, clone);
      expect(r.stderr).toBe("");
      expect(sha256(r.data!)).toBe(sha);
      // The parent itself stays closed to the clone's client.
      expect((await readAs(user, k, imageA)).ok).toBe(false);
      await attempt(revokeRbdAccess(admin, user));
    });

    it("lists Stowage's clients with key digests only, and names the monitors", async () => {
      const listed = await listStowageCephxClients(admin);
      expect(listed.map((c) => c.user)).toEqual([userB, userC]);
      const text = JSON.stringify(listed);
      for (const k of keys) expect(text).not.toContain(k);
      expect(listed.every((c) => /^[0-9a-f]{16}$/.test(c.keyDigest))).toBe(true);
      expect(listed[0]?.caps.mon).toBe("profile rbd");
      expect(await cephMonitorAddresses(admin)).toEqual([`127.0.0.1:${ceph.monPort}`]);
    });

    it("revokes: B's key is refused afterwards, and revoking a missing client succeeds", async () => {
      const kB = keys[0]!;
      expect(await attempt(revokeRbdAccess(admin, userB))).toEqual({ existed: true });
      expect(await authGet(userB)).toBeUndefined();
      const r = await readAs(userB, kB, imageA);
      expect(r.ok).toBe(false);
      expect(r.data).toBeUndefined();
      expect(await attempt(revokeRbdAccess(admin, userB))).toEqual({ existed: false });
      // C is untouched.
      expect((await readAs(userC, keys[1]!, imageB)).ok).toBe(true);
      expect((await listStowageCephxClients(admin)).map((c) => c.user)).toEqual([userC]);
    });

    it("refuses bad input before running anything, without quoting the key", async () => {
      const before = events.length;
      const k = key();
      for (const bad of [
        { pool: "rbd", image: imageA, user: "admin", key: k },
        { pool: "rbd", image: imageA, user: "stowage-x;rm -rf", key: k },
        { pool: "rbd", image: imageA, user: "client.stowage.x", key: k },
        { pool: "rbd/x", image: imageA, user: userB, key: k },
        { pool: "rbd", image: "a b", user: userB, key: k },
        { pool: "rbd", image: imageA, user: userB, key: `${k.slice(0, 30)}"\n\tcaps osd = "allow *` },
      ]) {
        const e = await grantRbdAccess(admin, bad).catch((x: unknown) => x);
        expect(e).toMatchObject({ code: "invalid_argument" });
        errors.push(e);
      }
      await expect(revokeRbdAccess(admin, "admin")).rejects.toMatchObject({ code: "invalid_argument" });
      expect(events.length).toBe(before);
      // A missing image fails in rbd info, before any import.
      const missing = await grantRbdAccess(admin, {
        pool: "rbd",
        image: "stowage-vol-dddddddddddddddddddddddddddddddd",
        user: userB,
        key: k,
      }).catch((x: unknown) => x);
      expect(missing).toBeInstanceOf(ToolError);
      errors.push(missing);
      expect(events.slice(before).map((e) => e.argv.slice(0, 2).join(" "))).toEqual(["info --format"]);
    });

    it("hides the key even when ceph auth import fails and echoes its input", async () => {
      const fake = join(tmp.path, "fakebin");
      await execa("mkdir", ["-p", fake]);
      // A ceph that prints its stdin (the keyring) to stderr and fails: the error must not carry the key.
      await writeFile(
        join(fake, "ceph"),
        '#!/bin/sh\ncase "$*" in *import*) cat >&2; exit 1;; esac\nexec /usr/bin/ceph "$@"\n',
        {
          mode: 0o755,
        },
      );
      const seen: ToolInvocationEvent[] = [];
      const faulty: CephAdmin = {
        runner: createToolRunner({ pathPrefix: [fake], onInvocation: (e) => seen.push(e) }),
        conn: admin.conn,
      };
      const k = key();
      const e = await grantRbdAccess(faulty, { pool: "rbd", image: imageB, user: userC, key: k }).catch(
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(ToolError);
      expect((e as ToolError).stderr).toContain("<redacted>");
      errors.push(e);
      events.push(...seen);
    });

    it("never put a key in an argv the runner showed, or in an error", () => {
      expect(keys.length).toBeGreaterThan(4);
      expect(events.length).toBeGreaterThan(10);
      const shown = JSON.stringify(events);
      const failures = errors
        .map((e) => (e instanceof Error ? `${e.message} ${JSON.stringify(e)} ${e.stack}` : String(e)))
        .join("\n");
      for (const k of keys) {
        expect(shown).not.toContain(k);
        expect(failures).not.toContain(k);
        expect(failures).not.toContain(k.slice(0, 30));
      }
      expect(events.some((e) => e.argv.join(" ").startsWith("auth import"))).toBe(true);
    });
  },
);
