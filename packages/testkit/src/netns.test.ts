import { execFile } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createConnection } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import {
  activeFleets,
  FLEET_CONTROLLER_ADDRESS,
  FLEET_SUBNET,
  type Fleet,
  fleetBlackhole,
  listNetns,
  netnsAvailable,
  startFleet,
} from "./netns.js";
import { sleep } from "./ports.js";
import { spawnService } from "./process.js";
import { makeTempDir, type TempDir } from "./temp.js";

const avail = netnsAvailable();
const title = avail.ok ? "test fleet (network namespaces)" : `test fleet: SKIPPED, ${avail.reason}`;
// a prefix per test process, so two runs of this file at once do not collide
const tag = (process.pid % 100_000).toString(36);

function isGone(pid: number): boolean {
  try {
    return /^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return true;
  }
}

function ipJson<T>(args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile("ip", ["-j", ...args], { encoding: "utf8" }, (err, stdout, stderr) =>
      err ? reject(new Error(stderr || err.message)) : resolve(JSON.parse(stdout || "[]") as T),
    );
  });
}

/** A connect from the test process, in the root namespace: the error code and how long it took. */
function rootConnect(host: string, port: number): Promise<{ ok: boolean; code?: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const s = createConnection({ host, port });
    const done = (ok: boolean, code?: string) => {
      s.destroy();
      resolve({ ok, ...(code ? { code } : {}), ms: Date.now() - t0 });
    };
    s.setTimeout(3000, () => done(false, "TIMEOUT"));
    s.once("connect", () => done(true));
    s.once("error", (e: NodeJS.ErrnoException) => done(false, e.code));
  });
}

const ECHO_SERVER = (host: string, port: number) =>
  `require("node:net").createServer((s) => { s.on("error", () => {}); s.end("hi"); }).listen(${port}, ${JSON.stringify(host)}, () => console.log("listening"))`;

/** What is left of a fleet: its namespaces. */
const leftovers = (prefix: string) => listNetns().filter((n) => n.startsWith(`${prefix}-`));

/** The route must be gone once no fleet is up (another test file may have one up meanwhile). */
function expectRouteReleased(): void {
  if (activeFleets().length === 0) expect(fleetBlackhole().present).toBe(false);
  else expect(fleetBlackhole().present).toBe(true);
}

describe.skipIf(!avail.ok)(title, () => {
  let fleet: Fleet;
  let tmp: TempDir;
  const prefix = `nt${tag}`;

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-netns-test-");
    fleet = await startFleet({ prefix, hosts: 3 });
  });
  afterAll(async () => {
    await fleet?.teardown();
    await tmp?.cleanup();
  });

  it("makes the namespaces with their addresses, no default route, and the blackhole in the root namespace", async () => {
    expect(fleet.namespaces).toEqual([
      `${prefix}-br`,
      `${prefix}-ctl`,
      `${prefix}-h1`,
      `${prefix}-h2`,
      `${prefix}-h3`,
    ]);
    expect(listNetns()).toEqual(expect.arrayContaining([...fleet.namespaces]));
    expect(fleet.controller.address).toBe(FLEET_CONTROLLER_ADDRESS);
    expect(fleet.hosts.map((h) => h.address)).toEqual(["203.0.113.11", "203.0.113.12", "203.0.113.13"]);
    for (const node of [fleet.controller, ...fleet.hosts]) {
      const addrs = await ipJson<{ addr_info: { local: string; prefixlen: number; family: string }[] }[]>([
        "-n",
        node.netns,
        "-4",
        "addr",
        "show",
        "dev",
        "eth0",
      ]);
      expect(addrs[0]?.addr_info.map((a) => `${a.local}/${a.prefixlen}`)).toEqual([`${node.address}/24`]);
    }
    for (const ns of fleet.namespaces) {
      for (const family of ["-4", "-6"]) {
        const routes = await ipJson<{ dst: string }[]>(["-n", ns, family, "route", "show"]);
        expect(
          routes.filter((r) => r.dst === "default"),
          `${ns} ${family}`,
        ).toEqual([]);
      }
      const v4 = await ipJson<{ dst: string }[]>(["-n", ns, "-4", "route", "show"]);
      expect(v4.map((r) => r.dst)).toEqual(ns.endsWith("-br") ? [] : [FLEET_SUBNET]);
    }
    expect(fleetBlackhole()).toEqual({ present: true, ours: true });
    // nothing of the fleet in the root namespace but the route: no veth, no bridge
    const rootLinks = await ipJson<{ ifname: string }[]>(["link", "show"]);
    expect(rootLinks.filter((l) => l.ifname.includes(prefix) || /^(br0|ctl|h\d+)$/.test(l.ifname))).toEqual(
      [],
    );
  });

  it("each host reaches the controller's address and every other host; the root namespace reaches none", async () => {
    const servers = await Promise.all(
      [fleet.controller, ...fleet.hosts].map((n) =>
        fleet.spawn(n, {
          name: `echo-${n.name}`,
          command: process.execPath,
          args: ["-e", ECHO_SERVER(n.address, 7000)],
          readyWhen: (line) => line === "listening",
        }),
      ),
    );
    try {
      for (const h of fleet.hosts) {
        const r = await fleet.connect(h, FLEET_CONTROLLER_ADDRESS, 7000);
        expect(r, `${h.name} -> ctl: ${JSON.stringify(r)}`).toMatchObject({ ok: true });
        for (const other of fleet.hosts) {
          if (other === h) continue;
          const r2 = await fleet.connect(h, other.address, 7000);
          expect(r2, `${h.name} -> ${other.name}: ${JSON.stringify(r2)}`).toMatchObject({ ok: true });
        }
      }
      // a port nobody listens on is refused (the host answers: it is there)
      expect(await fleet.connect("h1", fleet.hosts[1]!.address, 7001)).toMatchObject({
        ok: false,
        code: "ECONNREFUSED",
      });
      // the root namespace: the blackhole route refuses at once (EINVAL), nothing is sent anywhere
      for (const addr of [FLEET_CONTROLLER_ADDRESS, ...fleet.hosts.map((h) => h.address)]) {
        const r = await rootConnect(addr, 7000);
        expect(r, addr).toMatchObject({ ok: false, code: "EINVAL" });
        expect(r.ms).toBeLessThan(500);
      }
    } finally {
      await Promise.all(servers.map((s) => s.stop()));
    }
  });

  it("spawnService({ netns }) runs the service inside the namespace; kill reaches it and its children", async () => {
    const svc = await spawnService({
      name: "in-ns",
      netns: fleet.hosts[0]!.netns,
      command: process.execPath,
      args: [
        "-e",
        `const c = require("node:child_process").spawn("sleep", ["1000"], { stdio: "ignore" }); console.log("child " + c.pid); setInterval(() => {}, 1000);`,
      ],
      readyWhen: (line) => line.startsWith("child "),
    });
    const childPid = Number(/child (\d+)/.exec(svc.logs())![1]);
    const ident = await fleet.exec("ctl", "ip", ["netns", "identify", String(svc.pid)]);
    expect(ident.stdout.trim()).toBe(fleet.hosts[0]!.netns);
    expect(readFileSync(`/proc/${svc.pid}/comm`, "utf8").trim()).toBe("node"); // ip exec'd node: same pid
    const pids = (await fleet.exec("h1", "ip", ["netns", "pids", fleet.hosts[0]!.netns])).stdout.split(/\s+/);
    expect(pids).toEqual(expect.arrayContaining([String(svc.pid), String(childPid)]));
    await svc.kill();
    await sleep(100);
    expect(isGone(svc.pid)).toBe(true);
    expect(isGone(childPid)).toBe(true);
  });

  it("polls a URL readiness check from inside the namespace", async () => {
    const t0 = Date.now();
    const svc = await fleet.spawn("ctl", {
      name: "http",
      command: process.execPath,
      args: [
        "-e",
        `setTimeout(() => require("node:http").createServer((q, r) => r.end("ok")).listen(7002, ${JSON.stringify(FLEET_CONTROLLER_ADDRESS)}), 300)`,
      ],
      readyWhen: `http://${FLEET_CONTROLLER_ADDRESS}:7002/`,
      readyTimeoutMs: 10_000,
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    const r = await fleet.exec("h2", process.execPath, [
      "-e",
      `fetch("http://${FLEET_CONTROLLER_ADDRESS}:7002/").then((r) => r.text()).then(console.log)`,
    ]);
    expect(r.stdout.trim()).toBe("ok");
    await svc.stop();
  });

  it("shares the blackhole route between two fleets: it stays while either is up", async () => {
    const second = await startFleet({ prefix: `nu${tag}`, hosts: 1 });
    onTestFinished(() => second.teardown());
    expect(activeFleets().map((f) => f.prefix)).toEqual(expect.arrayContaining([prefix, second.prefix]));
    // the same addresses on separate bridges do not clash
    expect(second.controller.address).toBe(fleet.controller.address);
    await second.teardown();
    await second.teardown(); // idempotent
    expect(leftovers(second.prefix)).toEqual([]);
    expect(fleetBlackhole()).toEqual({ present: true, ours: true }); // the first fleet is still up
    await expect(startFleet({ prefix, hosts: 1 })).rejects.toThrow(/exist/); // a live prefix is refused
  });

  it.fails("(a test that throws with a fleet up: expected to fail)", async () => {
    const f = await startFleet({ prefix: `nx${tag}`, hosts: 2 });
    onTestFinished(() => f.teardown());
    expect(leftovers(f.prefix)).toHaveLength(4);
    throw new Error("boom");
  });

  it("… and after it nothing of that fleet is left", () => {
    expect(leftovers(`nx${tag}`)).toEqual([]);
    expect(activeFleets().map((f) => f.prefix)).not.toContain(`nx${tag}`);
  });

  const tsxCli = createRequire(import.meta.url).resolve("tsx/cli");
  const netnsModule = fileURLToPath(new URL("./netns.ts", import.meta.url));
  /** A child test process that brings a fleet up, says "up", then throws or waits to be killed. */
  const crashChild = (p: string, how: "throw" | "wait") => {
    const script = join(tmp.path, `${p}.mts`);
    writeFileSync(
      script,
      `import { startFleet } from ${JSON.stringify(netnsModule)};
await startFleet({ prefix: ${JSON.stringify(p)}, hosts: 2 });
console.log("up");
${how === "throw" ? 'throw new Error("crash");' : "setInterval(() => {}, 1000);"}
`,
    );
    return spawnService({
      name: `crash-${p}`,
      command: process.execPath,
      args: [tsxCli, script],
      env: { STOWAGE_TESTKIT_NO_REAPER: undefined },
      readyWhen: (line) => line === "up",
      readyTimeoutMs: 20_000,
    });
  };

  it("cleans up after a test process that dies of an uncaught error (exit handlers)", async () => {
    const p = `nc${tag}`;
    const child = await crashChild(p, "throw");
    expect(await child.exited).not.toBe(0);
    expect(leftovers(p)).toEqual([]);
  });

  it("cleans up after a test process killed by SIGKILL (the reaper runs the CLI's down)", async () => {
    const p = `nk${tag}`;
    const child = await crashChild(p, "wait");
    expect(leftovers(p)).toHaveLength(4);
    await child.kill();
    const deadline = Date.now() + 20_000;
    while (leftovers(p).length > 0 && Date.now() < deadline) await sleep(200);
    expect(leftovers(p)).toEqual([]);
    const end = Date.now() + 5000; // the route release follows the namespaces' deletion
    while (activeFleets().some((f) => f.prefix === p) && Date.now() < end) await sleep(100);
    expect(activeFleets().map((f) => f.prefix)).not.toContain(p);
  }, 40_000);

  it("tears down everything it made, idempotently", async () => {
    await fleet.teardown();
    await fleet.teardown();
    expect(leftovers(prefix)).toEqual([]);
    expect(activeFleets().map((f) => f.prefix)).not.toContain(prefix);
    expectRouteReleased();
    const rootLinks = await ipJson<{ ifname: string; linkinfo?: { info_kind?: string } }[]>([
      "-d",
      "link",
      "show",
    ]);
    expect(rootLinks.filter((l) => l.linkinfo?.info_kind === "veth")).toEqual([]);
  });
});
