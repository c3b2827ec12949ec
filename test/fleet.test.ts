/**
 * A cluster on the test fleet (issue 11): the controller and nats-server in a namespace of their own on
 * 203.0.113.1, one agent per host namespace, stowctl from inside the namespaces. Needs root and `ip netns`.
 */
import { execFile } from "node:child_process";
import { readdirSync } from "node:fs";
import { createConnection } from "node:net";
import { join } from "node:path";
import {
  activeFleets,
  FLEET_CONTROLLER_ADDRESS,
  fleetBlackhole,
  listNetns,
  natsAvailable,
  netnsAvailable,
  type Service,
} from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { qemuImgInfo } from "./support/cluster.js";
import { FLEET_GRPC_PORT, type FleetCluster, startFleetCluster } from "./support/fleet.js";

const avail = netnsAvailable();
const skipReason = !avail.ok ? avail.reason : !natsAvailable() ? "nats-server is not installed" : undefined;
const title = skipReason ? `cluster on a test fleet: SKIPPED, ${skipReason}` : "cluster on a test fleet";
const prefix = `fl${(process.pid % 100_000).toString(36)}`;

interface VolumeJson {
  id: string;
  name: string;
  state: string;
  hostId: string;
  hostPath: string;
}

function ipJson<T>(args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile("ip", ["-j", ...args], { encoding: "utf8" }, (err, stdout, stderr) =>
      err ? reject(new Error(stderr || err.message)) : resolve(JSON.parse(stdout || "[]") as T),
    );
  });
}

describe.skipIf(skipReason !== undefined)(title, () => {
  let c: FleetCluster;

  beforeAll(async () => {
    c = await startFleetCluster({ prefix, hosts: 3 });
  }, 120_000);
  afterAll(async () => {
    await c?.stop();
  });

  it("shows the three hosts up, each with its pool", async () => {
    const hosts = await c.stowctlJson<{ id: string; state: string }[]>(["host", "list"]);
    expect(hosts.map((h) => [h.id, h.state])).toEqual([
      ["h1", "up"],
      ["h2", "up"],
      ["h3", "up"],
    ]);
    const pools = await c.stowctlJson<{ id: string }[]>(["pool", "list"], { on: "h3" });
    expect(pools.map((p) => p.id).sort()).toEqual(["h1/default", "h2/default", "h3/default"]);
  });

  it("each host reaches the controller on 203.0.113.1 and the other hosts; the root namespace reaches nothing", async () => {
    for (const h of c.fleet.hosts) {
      const r = await c.fleet.connect(h, FLEET_CONTROLLER_ADDRESS, FLEET_GRPC_PORT);
      expect(r, `${h.name} -> controller: ${JSON.stringify(r)}`).toMatchObject({ ok: true });
    }
    const echo: Service[] = await Promise.all(
      c.fleet.hosts.map((h) =>
        c.fleet.spawn(h, {
          name: `echo-${h.name}`,
          command: process.execPath,
          args: [
            "-e",
            `require("node:net").createServer((s) => { s.on("error", () => {}); s.end(); }).listen(7000, ${JSON.stringify(h.address)}, () => console.log("listening"))`,
          ],
          readyWhen: (line) => line === "listening",
        }),
      ),
    );
    try {
      for (const h of c.fleet.hosts)
        for (const o of c.fleet.hosts) {
          if (o === h) continue;
          const r = await c.fleet.connect(h, o.address, 7000);
          expect(r, `${h.name} -> ${o.name}: ${JSON.stringify(r)}`).toMatchObject({ ok: true });
        }
    } finally {
      await Promise.all(echo.map((s) => s.stop()));
    }
    const t0 = Date.now();
    const code = await new Promise<string | undefined>((resolve) => {
      const s = createConnection({ host: FLEET_CONTROLLER_ADDRESS, port: FLEET_GRPC_PORT });
      s.setTimeout(3000, () => {
        s.destroy();
        resolve("TIMEOUT");
      });
      s.once("connect", () => {
        s.destroy();
        resolve(undefined);
      });
      s.once("error", (e: NodeJS.ErrnoException) => resolve(e.code));
    });
    expect(code).toBe("EINVAL"); // the blackhole route
    expect(Date.now() - t0).toBeLessThan(500);
  });

  it("no namespace of the fleet has a default route", async () => {
    for (const ns of c.fleet.namespaces)
      for (const family of ["-4", "-6"]) {
        const routes = await ipJson<{ dst: string }[]>(["-n", ns, family, "route", "show"]);
        expect(
          routes.filter((r) => r.dst === "default"),
          `${ns} ${family}`,
        ).toEqual([]);
      }
  });

  it("provisions a volume on each host through stowctl, from the controller's namespace and from a host's", async () => {
    const made: VolumeJson[] = [];
    for (const [i, h] of c.fleet.hosts.entries()) {
      const on = i === 1 ? "h2" : undefined; // one of them from a host namespace
      const r = await c.stowctlJson<{ volume: VolumeJson }>(
        ["volume", "create", `disk-${h.name}`, "--size", "1G", "--host", h.name, "--wait"],
        on ? { on } : {},
      );
      expect(r.volume).toMatchObject({ state: "available", hostId: h.name });
      made.push(r.volume);
    }
    for (const [i, v] of made.entries()) {
      const agent = c.agents[i]!;
      expect(v.hostPath.startsWith(agent.poolDir)).toBe(true);
      expect(readdirSync(agent.poolDir).filter((f) => f.startsWith("vol-"))).toHaveLength(1);
      const info = await qemuImgInfo(v.hostPath);
      expect(info).toMatchObject({ format: "qcow2", "virtual-size": 1024 ** 3 });
    }
    const list = await c.stowctlJson<VolumeJson[]>(["volume", "list"], { on: "h1" });
    expect(list.map((v) => [v.name, v.hostId, v.state]).sort()).toEqual([
      ["disk-h1", "h1", "available"],
      ["disk-h2", "h2", "available"],
      ["disk-h3", "h3", "available"],
    ]);
  });

  it("stop() leaves no namespace, veth or route behind", async () => {
    const dir = c.dir;
    await c.stop();
    await c.stop(); // idempotent
    expect(listNetns().filter((n) => n.startsWith(`${prefix}-`))).toEqual([]);
    expect(activeFleets().map((f) => f.prefix)).not.toContain(prefix);
    // another test file may have a fleet up: then the shared route stays, else it is gone
    expect(fleetBlackhole().present).toBe(activeFleets().length > 0);
    const links = await ipJson<{ linkinfo?: { info_kind?: string } }[]>(["-d", "link", "show"]);
    expect(links.filter((l) => l.linkinfo?.info_kind === "veth")).toEqual([]);
    expect(() => readdirSync(join(dir))).toThrow(/ENOENT/);
  });
});
