import { readFile, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import {
  freePort,
  type GaneshaService,
  ganeshaAvailable,
  makeTempDir,
  startGanesha,
  type TempDir,
} from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NF3DIR, NF3REG, Nfs3Client, type NfsError } from "./nfs3.js";

// The NFSv3 client against a real NFS-Ganesha (v3, its own rpcbind): every procedure the netfs driver uses,
// checked against the exported directory on this machine's file system.

const avail = ganeshaAvailable();
const title = avail.ok
  ? "Nfs3Client against NFS-Ganesha"
  : `Nfs3Client against NFS-Ganesha: SKIPPED, ${avail.reason}`;

describe.skipIf(!avail.ok)(title, () => {
  let tmp: TempDir;
  let g: GaneshaService;
  let c: Nfs3Client;

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-nfs3-test-");
    g = await startGanesha({ dir: tmp.path, exportPath: "/export" });
    c = new Nfs3Client({ host: g.address, exportPath: g.exportPath, timeoutMs: 5_000 });
    await c.fsinfo();
  }, 360_000);

  afterAll(async () => {
    c?.close();
    await g?.stop();
    await tmp?.cleanup();
  });

  it("finds the ports through the portmapper and mounts the export", async () => {
    expect(await c.getPort(100003, 3)).toBe(g.nfsPort);
    expect(await c.getPort(100005, 3)).toBe(g.mountPort);
    const root = await c.resolve("");
    expect(root?.attr.type).toBe(NF3DIR);
  });

  it("creates, writes (FILE_SYNC), reads, renames over, lists and removes files and directories", async () => {
    const root = await c.mount();
    const dir = await c.mkdir(root, "meta", 0o700);
    expect((await stat(join(g.exportDir, "meta"))).mode & 0o777).toBe(0o700);
    const fh = await c.create(dir, "a.json.partial", 0o600, "guarded");
    const body = Buffer.from(`${"x".repeat(200_000)}\nend\n`);
    await c.write(fh, 0n, body);
    // FILE_SYNC: the bytes are in the server's file when WRITE answers.
    expect((await readFile(join(g.exportDir, "meta", "a.json.partial"))).equals(body)).toBe(true);
    expect((await c.readAll(fh)).equals(body)).toBe(true);
    await writeFile(join(g.exportDir, "meta", "a.json"), "old\n");
    await c.rename(dir, "a.json.partial", dir, "a.json");
    expect(await readFile(join(g.exportDir, "meta", "a.json"), "utf8")).toBe(body.toString());
    const found = await c.resolve("meta/a.json");
    expect(found?.attr.type).toBe(NF3REG);
    expect(found?.attr.size).toBe(BigInt(body.length));
    expect(found?.attr.mode).toBe(0o600);
    await c.setattr(found!.fh, { mode: 0o444, size: 3n });
    const st = await stat(join(g.exportDir, "meta", "a.json"));
    expect([st.mode & 0o777, st.size]).toEqual([0o444, 3]);

    for (let i = 0; i < 300; i++) await writeFile(join(g.exportDir, "meta", `f-${i}.txt`), "");
    const names = (await c.readdir(dir)).map((e) => e.name).sort();
    expect(names).toHaveLength(301);
    expect(names).toContain("a.json");
    expect(names).not.toContain(".");
    expect((await c.readdir(dir)).every((e) => e.attr !== undefined && e.handle !== undefined)).toBe(true);
    for (let i = 0; i < 300; i++) await c.remove(dir, `f-${i}.txt`);
    await c.remove(dir, "a.json");
    expect(await c.lookup(dir, "a.json")).toBeUndefined();
    await c.rmdir(root, "meta");
    expect(await c.resolve("meta/a.json")).toBeUndefined();
  });

  it("maps NFS3 errors to error codes, and refuses names that could leave a directory", async () => {
    const root = await c.mount();
    const err = (p: Promise<unknown>) =>
      p.then(
        () => undefined,
        (e: unknown) => e as NfsError,
      );
    const missing = await err(c.remove(root, "nope"));
    expect([missing?.code, missing?.status]).toEqual(["not_found", "NFS3ERR_NOENT"]);
    await c.create(root, "x", 0o600, "guarded");
    const exists = await err(c.create(root, "x", 0o600, "guarded"));
    expect([exists?.code, exists?.status]).toEqual(["already_exists", "NFS3ERR_EXIST"]);
    // UNCHECKED answers the existing file.
    await c.create(root, "x", 0o600, "unchecked");
    await c.mkdir(root, "d", 0o700);
    await c.create((await c.resolve("d"))!.fh, "f", 0o600, "guarded");
    const notEmpty = await err(c.rmdir(root, "d"));
    expect([notEmpty?.code, notEmpty?.status]).toEqual(["failed_precondition", "NFS3ERR_NOTEMPTY"]);
    await c.remove((await c.resolve("d"))!.fh, "f");
    await c.rmdir(root, "d");
    await c.remove(root, "x");
    for (const bad of ["..", ".", "a/b", "", "x".repeat(256)]) {
      const e = await err(c.lookup(root, bad));
      expect(e?.code, bad).toBe("invalid_argument");
    }
    const wrongExport = new Nfs3Client({ host: g.address, exportPath: "/nope", timeoutMs: 5_000 });
    const denied = await err(wrongExport.mount());
    expect(denied?.status).toMatch(/^MNT3ERR_/);
  });

  it("reports capacity (FSSTAT) as the exported file system's", async () => {
    const s = await c.fsstat();
    expect(s.totalBytes).toBeGreaterThan(0n);
    expect(s.availBytes).toBeLessThanOrEqual(s.freeBytes);
    expect(s.freeBytes).toBeLessThanOrEqual(s.totalBytes);
  });

  it("reopens a broken connection on the next call; handles outlive it", async () => {
    const root = await c.mount();
    c.close();
    expect((await c.getattr(root)).type).toBe(NF3DIR);
  });

  it("bounds every call: a server that never answers is a deadline_exceeded, a closed port unavailable", async () => {
    const silent = createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    const port = (silent.address() as { port: number }).port;
    try {
      const slow = new Nfs3Client({
        host: "127.0.0.1",
        exportPath: "/export",
        nfsPort: port,
        mountPort: port,
        timeoutMs: 300,
      });
      const t0 = Date.now();
      const e = await slow.mount().then(
        () => undefined,
        (x: unknown) => x as NfsError,
      );
      expect(e?.code).toBe("deadline_exceeded");
      expect(Date.now() - t0).toBeLessThan(3_000);
      const closedPort = await freePort();
      const refused = new Nfs3Client({
        host: "127.0.0.1",
        exportPath: "/export",
        mountPort: closedPort,
        timeoutMs: 1_000,
      });
      const r = await refused.mount().then(
        () => undefined,
        (x: unknown) => x as NfsError,
      );
      expect([r?.code, r?.status]).toEqual(["unavailable", "CONNECTION"]);
    } finally {
      silent.close();
    }
  });
});
