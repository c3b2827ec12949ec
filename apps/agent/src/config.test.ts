import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { describe, expect, it } from "vitest";
import { agentHelp, agentSettings, natsTlsEnabled, parseAgentConfig, secureMode } from "./config.js";

/** Every setting of the agent's config and its default as --help shows it ("required" when it has none). */
const HOST: Record<string, string> = {
  hostName: JSON.stringify(
    hostname()
      .toLowerCase()
      .replace(/[^a-z0-9._-]/g, "-")
      .slice(0, 63),
  ),
  zone: '""',
  labels: "{}",
  controllerUrl: '"http://127.0.0.1:7480"',
  natsUrl: '"nats://127.0.0.1:4222"',
  natsUser: "unset (no NATS auth)",
  natsPass: "unset (none)",
  stateDir: '"/var/lib/stowage/agent"',
  caFile: "unset (none: the first join needs it)",
  joinTokenFile: "unset (the token in STOWAGE_JOIN_TOKEN)",
  natsTls: '"auto"',
  sysfsRoot: '"/sys"',
  procRoot: '"/proc"',
  metricsListen: '"127.0.0.1:7482"',
  inventoryIntervalMs: "300000",
  poolConcurrency: "4",
  maxConcurrency: "16",
  shutdownGraceMs: "5000",
  toolTimeoutMs: "600000",
  initiatorName: '""',
  iscsiPortal: "unset (none: this host serves no iSCSI exports)",
  tgtControlPort: "0",
  pools: "required",
  logLevel: '"info"',
};
const POOL: Record<string, string> = {
  name: "required",
  numaNode:
    "unset (dir: read from sysfs for the backing device; lvm and lvmthin: for the volume group's physical volumes, when they share one; rbd: none)",
  labels: "{}",
  overcommitRatio:
    "unset (1 for dir and lvm, the controller's STOWAGE_THIN_OVERCOMMIT_RATIO for lvmthin and rbd)",
  reservedPercent: "0",
  maxVolumes: "0",
  maxUsedPercent: "90",
  kind: "required",
};
const LVM = { vg: "required", udev: "true" };
const KINDS: Record<string, Record<string, string>> = {
  dir: {
    path: "required",
    "qcow2.clusterSize": "unset (qemu-img's default, 65536)",
    "qcow2.preallocation": "unset (qemu-img's default, off)",
    "qcow2.lazyRefcounts": "unset (qemu-img's default, false)",
    "qcow2.compressionType": "unset (qemu-img's default, zlib)",
    "qcow2.extendedL2": "unset (qemu-img's default, false)",
    maxChainDepth: "unset (8)",
  },
  lvm: LVM,
  lvmthin: { ...LVM, thinPool: "required" },
  netfs: {
    url: "required",
    "qcow2.clusterSize": "unset (qemu-img's default, 65536)",
    "qcow2.preallocation": "unset (qemu-img's default, off)",
    "qcow2.lazyRefcounts": "unset (qemu-img's default, false)",
    "qcow2.compressionType": "unset (qemu-img's default, zlib)",
    "qcow2.extendedL2": "unset (qemu-img's default, false)",
    maxChainDepth: "unset (8)",
  },
  rbd: {
    cephPool: "required",
    namespace: "unset (none)",
    cephConf: "unset (rbd's default, /etc/ceph/ceph.conf)",
    cephUser: "unset (rbd's default, admin)",
    keyring: "unset (rbd's default search path)",
  },
};

const OPERATING = readFileSync(new URL("../../../docs/operating.md", import.meta.url), "utf8");

const defaults = (rows: { path: string; default: string }[]) =>
  Object.fromEntries(rows.map((r) => [r.path, r.default]));

describe("agent settings", () => {
  const settings = agentSettings();

  it("are the host's fields, every pool's, and each pool kind's, each with its default", () => {
    expect(defaults(settings.host)).toEqual(HOST);
    expect(defaults(settings.pool)).toEqual(POOL);
    expect(
      Object.fromEntries(Object.entries(settings.kinds).map(([k, rows]) => [k, defaults(rows)])),
    ).toEqual(KINDS);
  });

  it("each have a description", () => {
    const all = [...settings.host, ...settings.pool, ...Object.values(settings.kinds).flat()];
    for (const r of all) expect(r.description.length, r.path).toBeGreaterThan(5);
  });
});

describe("agent --help", () => {
  const help = agentHelp();

  it("names every setting with its default, in its section", () => {
    const sections = help.split("\n\n");
    const section = (title: string) => sections.find((s) => s.startsWith(title)) ?? "";
    const expectRows = (text: string, rows: Record<string, string>) => {
      for (const [path, fallback] of Object.entries(rows)) {
        const shown = fallback === "required" ? "required" : `default: ${fallback}`;
        expect(text, path).toContain(`\n  ${path} `);
        expect(text, path).toMatch(
          new RegExp(`\\n  ${regexLiteral(path)} +[^\\n]*\\n +[^\\n]*, ${regexLiteral(shown)}`),
        );
      }
    };
    expectRows(section("Host settings"), HOST);
    expectRows(section("Every pool"), POOL);
    for (const [kind, rows] of Object.entries(KINDS)) expectRows(section(`Pools of kind "${kind}"`), rows);
  });

  it("says how to pass the config, and the join token of the secure mode", () => {
    expect(help).toContain("--config");
    expect(help).toContain("STOWAGE_AGENT_CONFIG");
    expect(help).toContain("STOWAGE_JOIN_TOKEN");
  });
});

describe("docs/operating.md", () => {
  it("lists every setting of the agent config with its default", () => {
    const rows = OPERATING.split("\n").filter((l) => l.startsWith("| `"));
    const settings = agentSettings();
    const all = [...settings.host, ...settings.pool, ...Object.values(settings.kinds).flat()];
    for (const r of all) {
      const row = rows.find((l) => l.startsWith(`| \`${r.path}\` |`));
      expect(row, r.path).toBeDefined();
      // The host name's default is this machine's: the docs say so in words.
      const cell = row?.split(" | ")[2];
      const literal = r.default === "required" || r.default.startsWith("unset");
      if (r.path !== "hostName") expect(cell, r.path).toBe(literal ? r.default : `\`${r.default}\``);
    }
  });
});

describe("parseAgentConfig", () => {
  it("reads a netfs pool and keeps its URL canonical (the share's identity on every host)", () => {
    const c = parseAgentConfig({
      hostName: "node1",
      pools: [
        { name: "shared", kind: "netfs", url: "nfs://NAS1.example/srv/vm/", qcow2: { clusterSize: 131072 } },
      ],
    });
    expect(c.pools[0]).toMatchObject({
      kind: "netfs",
      url: "nfs://nas1.example/srv/vm",
      qcow2: { clusterSize: 131072 },
    });
  });

  it("refuses netfs URLs with user info, a port, a query, a relative or dot path, or another scheme", () => {
    for (const url of [
      "nfs://user@nas/export",
      "nfs://user:pw@nas/export",
      "nfs://nas:2049/export",
      "nfs://nas/export?version=4",
      "nfs://nas/export#x",
      "nfs://nas/../etc",
      "nfs://nas/a/./b",
      "nfs://nas/",
      "nfs://nas",
      "nfs:///export",
      "smb://nas/export",
      "/export",
      "nfs://na s/export",
      "nfs://nas/ex port",
      "nfs://nas/ex;rm -rf",
    ]) {
      expect(
        () => parseAgentConfig({ hostName: "n", pools: [{ name: "p", kind: "netfs", url }] }),
        url,
      ).toThrow(/nfs:\/\/server\/path/);
    }
  });

  it("fills the defaults of a minimal dir config", () => {
    const c = parseAgentConfig({
      hostName: "node1",
      pools: [{ name: "default", kind: "dir", path: "/srv/p" }],
    });
    expect(c).toEqual({
      hostName: "node1",
      zone: "",
      labels: {},
      controllerUrl: "http://127.0.0.1:7480",
      natsUrl: "nats://127.0.0.1:4222",
      stateDir: "/var/lib/stowage/agent",
      natsTls: "auto",
      sysfsRoot: "/sys",
      procRoot: "/proc",
      metricsListen: "127.0.0.1:7482",
      inventoryIntervalMs: 300000,
      poolConcurrency: 4,
      maxConcurrency: 16,
      shutdownGraceMs: 5000,
      toolTimeoutMs: 600000,
      initiatorName: "",
      tgtControlPort: 0,
      logLevel: "info",
      pools: [
        {
          name: "default",
          kind: "dir",
          path: "/srv/p",
          labels: {},
          reservedPercent: 0,
          maxVolumes: 0,
          maxUsedPercent: 90,
          qcow2: {},
        },
      ],
    });
  });

  it("bounds the operations it runs at once, per pool and in all, to what the command consumer allows", () => {
    const base = { hostName: "node1", pools: [{ name: "default", kind: "dir", path: "/srv/p" }] };
    const c = parseAgentConfig({ ...base, poolConcurrency: 2, maxConcurrency: 8, shutdownGraceMs: 1000 });
    expect([c.poolConcurrency, c.maxConcurrency, c.shutdownGraceMs]).toEqual([2, 8, 1000]);
    expect(() => parseAgentConfig({ ...base, poolConcurrency: 0 })).toThrow(/poolConcurrency/);
    expect(() => parseAgentConfig({ ...base, maxConcurrency: 65 })).toThrow(/maxConcurrency/);
    expect(() => parseAgentConfig({ ...base, shutdownGraceMs: -1 })).toThrow(/shutdownGraceMs/);
  });

  it("takes a pool of every kind with its own fields", () => {
    const c = parseAgentConfig({
      hostName: "node1",
      pools: [
        {
          name: "files",
          kind: "dir",
          path: "/srv/p",
          qcow2: { clusterSize: 65536, preallocation: "metadata" },
        },
        { name: "thick", kind: "lvm", vg: "vg0", udev: false, overcommitRatio: 1 },
        {
          name: "thin",
          kind: "lvmthin",
          vg: "vg0",
          thinPool: "tp0",
          reservedPercent: 10,
          maxUsedPercent: 80,
        },
        { name: "ceph", kind: "rbd", cephPool: "rbd", cephUser: "stowage", maxVolumes: 500, numaNode: 1 },
      ],
    });
    expect(c.pools.map((p) => p.kind)).toEqual(["dir", "lvm", "lvmthin", "rbd"]);
    expect(c.pools[1]).toMatchObject({ vg: "vg0", udev: false, overcommitRatio: 1 });
    expect(c.pools[2]).toMatchObject({
      udev: true,
      thinPool: "tp0",
      reservedPercent: 10,
      maxUsedPercent: 80,
    });
    expect(c.pools[3]).toMatchObject({ cephPool: "rbd", cephUser: "stowage", maxVolumes: 500, numaNode: 1 });
  });

  it("is in secure mode with an https controller URL, NATS TLS following it unless told", () => {
    const base = { hostName: "node1", pools: [{ name: "p", kind: "dir", path: "/srv/p" }] };
    const plain = parseAgentConfig(base);
    const secure = parseAgentConfig({ ...base, controllerUrl: "https://ctl.example:7480" });
    expect([secureMode(plain), natsTlsEnabled(plain)]).toEqual([false, false]);
    expect([secureMode(secure), natsTlsEnabled(secure)]).toEqual([true, true]);
    expect(natsTlsEnabled({ ...secure, natsTls: "off" })).toBe(false);
    expect(natsTlsEnabled({ ...plain, natsTls: "on" })).toBe(true);
    expect(() => parseAgentConfig({ ...base, stateDir: "state" })).toThrow(/stateDir must be absolute/);
  });

  it("never takes the join token itself (only a file naming it, or STOWAGE_JOIN_TOKEN)", () => {
    const base = { hostName: "node1", pools: [{ name: "p", kind: "dir", path: "/srv/p" }] };
    expect(() => parseAgentConfig({ ...base, joinToken: "stw_join_00" })).toThrow(/joinToken/);
    expect(parseAgentConfig({ ...base, joinTokenFile: "/run/stowage/join" }).joinTokenFile).toBe(
      "/run/stowage/join",
    );
  });

  it("defaults the host name to the machine's", () => {
    const c = parseAgentConfig({ pools: [{ name: "p", kind: "dir", path: "/srv/p" }] });
    expect(c.hostName).toBe(JSON.parse(HOST.hostName as string));
  });

  it("names the field of every error", () => {
    expect(() =>
      parseAgentConfig(
        {
          hostName: "Node_1",
          colour: "blue",
          pools: [
            { name: "p", kind: "dir", path: "relative" },
            { name: "p", kind: "lvmthin", vg: "vg0" },
          ],
        },
        "agent.json",
      ),
    ).toThrow(
      /invalid agent config agent\.json:\n(.|\n)*hostName(.|\n)*pools\.0\.path: pool paths must be absolute(.|\n)*pools\.1\.thinPool/,
    );
    expect(() =>
      parseAgentConfig({ colour: "blue", pools: [{ name: "p", kind: "dir", path: "/p" }] }),
    ).toThrow(/colour/);
  });

  it("refuses a config without pools, or with one name twice", () => {
    expect(() => parseAgentConfig({ pools: [] })).toThrow(/pools: an agent needs at least one pool/);
    expect(() =>
      parseAgentConfig({
        pools: [
          { name: "p", kind: "dir", path: "/a" },
          { name: "p", kind: "dir", path: "/b" },
        ],
      }),
    ).toThrow(/pools: pool name p is used twice/);
  });

  it("reads every agent config example of docs/operating.md", () => {
    const blocks = [...OPERATING.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1] as string);
    const configs = blocks.filter((b) => b.includes('"pools"'));
    expect(configs.length).toBeGreaterThanOrEqual(4);
    const kinds = configs.flatMap((b, i) =>
      parseAgentConfig(JSON.parse(b), `example ${i}`).pools.map((p) => p.kind),
    );
    expect(new Set(kinds)).toEqual(new Set(["dir", "lvm", "lvmthin", "netfs", "rbd"]));
  });

  it("reads the example configs in deploy/examples", () => {
    for (const name of ["agent.json", "agent-secure.json"]) {
      const path = new URL(`../../../deploy/examples/${name}`, import.meta.url);
      const c = parseAgentConfig(JSON.parse(readFileSync(path, "utf8")), `deploy/examples/${name}`);
      expect(c.pools.length).toBeGreaterThan(0);
      expect(secureMode(c), name).toBe(name === "agent-secure.json");
    }
  });
});

function regexLiteral(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
