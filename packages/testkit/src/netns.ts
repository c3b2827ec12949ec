/**
 * A test fleet of separate network hosts on one machine (as root): every host is a network namespace with a
 * veth into a bridge that lives in a namespace of its own, and the controller has a namespace too.
 *
 *   PREFIX-br   the bridge br0 and one port per node (named after the node: ctl, h1, h2, ...)
 *   PREFIX-ctl  eth0 203.0.113.1/24    (the controller, nats-server)
 *   PREFIX-h1   eth0 203.0.113.11/24   (host 1), PREFIX-h2 .12, ...
 *
 * Safety (docs/testkit.md, "The test fleet"): addresses come from 203.0.113.0/24 (TEST-NET-3) only, never
 * from 192.0.2.0/24, where this machine's real interface and gateway are; the namespaces get no default
 * route; while any fleet is up the root namespace has a blackhole route for 203.0.113.0/24, so a client
 * started by mistake outside the namespaces fails at once instead of sending a packet to the gateway. Each
 * veth is created with both ends already in their namespaces, so no interface ever appears in the root
 * namespace; the blackhole route is the only thing a fleet changes there.
 *
 * Several fleets at once: every fleet uses the same addresses, each on its own bridge (separate L2 networks
 * in separate namespaces cannot clash); they need distinct prefixes. The blackhole route is shared and
 * reference-counted: each fleet registers in /run/stowage-testkit/fleets/PREFIX.json under a lock file; the
 * route is added (tagged `proto 83`, so we know it is ours) if absent, and removed by the last fleet to go,
 * only if it carries our tag. A registration counts while its process lives or any of its namespaces exists.
 *
 * Teardown kills what still runs in the namespaces, deletes them (which removes the veths and the bridge),
 * releases the route, and is idempotent; it is registered with cleanup.ts, so a test that throws, a test
 * process that exits, or (through the reaper and this file's CLI) one killed by SIGKILL still cleans up.
 *
 * CLI (as root): `tsx packages/testkit/src/netns.ts up PREFIX N` (stays up until Ctrl-C), `down PREFIX`
 * (removes a fleet left behind), `list`.
 *
 * Every `ip` call goes through execFile with an argument array; nothing passes through a shell.
 */
import { execFile, execFileSync } from "node:child_process";
import {
  closeSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { trackCommand } from "./cleanup.js";
import { type Service, type SpawnServiceOptions, spawnService } from "./process.js";

/** The only range a fleet uses. Not configurable on purpose. */
export const FLEET_SUBNET = "203.0.113.0/24";
const NET = "203.0.113";
/** The controller namespace's address. */
export const FLEET_CONTROLLER_ADDRESS = `${NET}.1`;
/** The route protocol number that marks the blackhole route as added by the test kit. */
export const FLEET_ROUTE_PROTO = 83;
/** Registrations and the lock (tmpfs: gone after a reboot, like the namespaces themselves). */
export const FLEET_STATE_DIR = "/run/stowage-testkit/fleets";
const LOCK_FILE = join(FLEET_STATE_DIR, ".lock");
const MAX_HOSTS = 200;
const PREFIX_PATTERN = /^[a-z][a-z0-9]{0,15}$/;

/** Address of host `i` (1-based): 203.0.113.11, .12, ... */
export function fleetHostAddress(i: number): string {
  if (!Number.isInteger(i) || i < 1 || i > MAX_HOSTS) throw new Error(`fleet host index ${i} out of range`);
  return `${NET}.${10 + i}`;
}

export interface FleetNode {
  /** "ctl", "h1", "h2", ... */
  readonly name: string;
  /** The network namespace: PREFIX-ctl, PREFIX-h1, ... */
  readonly netns: string;
  /** Its address on the fleet network (eth0 in the namespace). */
  readonly address: string;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface ConnectResult {
  ok: boolean;
  /** The error code when it failed (ECONNREFUSED, EINVAL for a blackhole route, TIMEOUT). */
  code?: string;
  ms: number;
}

export interface Fleet {
  readonly prefix: string;
  readonly subnet: string;
  /** The namespace holding the bridge. */
  readonly bridgeNetns: string;
  readonly controller: FleetNode;
  readonly hosts: readonly FleetNode[];
  /** Every namespace of the fleet (bridge, controller, hosts). */
  readonly namespaces: readonly string[];
  /** A node by name ("ctl", "h1", ...) or namespace name. */
  node(name: string): FleetNode;
  /** Runs a command to completion inside a node's namespace (`ip netns exec`). Never rejects on exit codes. */
  exec(
    where: FleetNode | string,
    command: string,
    args?: readonly string[],
    opts?: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string },
  ): Promise<ExecResult>;
  /** spawnService inside a node's namespace. */
  spawn(where: FleetNode | string, opts: Omit<SpawnServiceOptions, "netns">): Promise<Service>;
  /** A TCP connect from inside a node's namespace. */
  connect(where: FleetNode | string, host: string, port: number, timeoutMs?: number): Promise<ConnectResult>;
  /** Kills what runs in the namespaces, deletes them, releases the blackhole route. Idempotent. */
  teardown(): Promise<void>;
}

export interface StartFleetOptions {
  /** Namespaces are PREFIX-br, PREFIX-ctl, PREFIX-h1...; a-z then up to 15 of a-z0-9. Distinct per live fleet. */
  prefix: string;
  /** Number of host namespaces (1..200). */
  hosts: number;
}

// ---------------------------------------------------------------------------------------------------------
// ip

class IpError extends Error {
  constructor(
    readonly args: readonly string[],
    readonly stderr: string,
  ) {
    super(`ip ${args.join(" ")}: ${stderr.trim() || "failed"}`);
  }
}

function ip(args: readonly string[]): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile("ip", args, { encoding: "utf8", timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(new IpError(args, stderr || err.message));
      else resolvePromise(stdout);
    });
  });
}

function ipSync(args: readonly string[]): string {
  try {
    return execFileSync("ip", args, { encoding: "utf8", timeout: 30_000, stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new IpError(args, e.stderr || e.message);
  }
}

/** The network namespaces `ip netns` knows (their names). */
export function listNetns(): string[] {
  try {
    return readdirSync("/run/netns");
  } catch {
    return [];
  }
}

/** The argv that runs `command args` inside `netns`, for execFile("ip", ...): `netns exec NETNS command args`. */
export function netnsExecArgs(netns: string, command: string, args: readonly string[] = []): string[] {
  return ["netns", "exec", netns, command, ...args];
}

/** Runs a command to completion inside `netns`. Resolves with its exit code and output (never rejects on a code). */
export function execInNetns(
  netns: string,
  command: string,
  args: readonly string[] = [],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<ExecResult> {
  return new Promise((resolvePromise) => {
    execFile(
      "ip",
      netnsExecArgs(netns, command, args),
      {
        encoding: "utf8",
        timeout: opts.timeoutMs ?? 60_000,
        maxBuffer: 64 * 1024 * 1024,
        ...(opts.env ? { env: opts.env } : {}),
        ...(opts.cwd ? { cwd: opts.cwd } : {}),
      },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
        resolvePromise({ exitCode: code, stdout, stderr: stderr || (err && code === -1 ? err.message : "") });
      },
    );
  });
}

const CONNECT_PROBE = `
const net = require("node:net");
const [, host, port, ms] = process.argv;
const t0 = Date.now();
const s = net.createConnection({ host, port: Number(port) });
const done = (ok, code) => { console.log(JSON.stringify({ ok, code, ms: Date.now() - t0 })); s.destroy(); process.exit(0); };
s.setTimeout(Number(ms), () => done(false, "TIMEOUT"));
s.once("connect", () => done(true));
s.once("error", (e) => done(false, e.code));
`;

/** A TCP connect to host:port from inside `netns` (a node probe; `ping` is not installed here). */
export async function connectFromNetns(
  netns: string,
  host: string,
  port: number,
  timeoutMs = 2000,
): Promise<ConnectResult> {
  const r = await execInNetns(netns, process.execPath, [
    "-e",
    CONNECT_PROBE,
    host,
    String(port),
    String(timeoutMs),
  ]);
  if (r.exitCode !== 0) throw new Error(`connect probe in ${netns} failed (${r.exitCode}): ${r.stderr}`);
  return JSON.parse(r.stdout) as ConnectResult;
}

/**
 * Whether fleets can be made here: root, `ip` present and `ip netns` usable. `ok: false` carries the reason
 * for a skip message.
 */
export function netnsAvailable(): { ok: true } | { ok: false; reason: string } {
  if (process.platform !== "linux") return { ok: false, reason: "network namespaces need Linux" };
  if (process.getuid?.() !== 0) return { ok: false, reason: "the test fleet needs root (ip netns add)" };
  try {
    ipSync(["netns", "list"]);
  } catch (err) {
    return { ok: false, reason: `ip netns is unavailable: ${(err as Error).message}` };
  }
  return { ok: true };
}

// ---------------------------------------------------------------------------------------------------------
// the shared blackhole route: registrations and a lock

interface Registration {
  prefix: string;
  pid: number;
  namespaces: string[];
  startedAt: string;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    return !/^State:\s*[ZX]/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
}

/**
 * Runs `fn` holding the fleets' lock file (O_EXCL create; it holds the pid). A lock whose holder is dead and
 * that is older than 2 s is broken. Held for milliseconds only.
 */
function withLock<T>(fn: () => T): T {
  mkdirSync(FLEET_STATE_DIR, { recursive: true, mode: 0o700 });
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const fd = openSync(LOCK_FILE, "wx", 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      try {
        const holder = Number(readFileSync(LOCK_FILE, "utf8"));
        const age = Date.now() - statSync(LOCK_FILE).mtimeMs;
        if (!pidAlive(holder) && age > 2000 && Number(readFileSync(LOCK_FILE, "utf8")) === holder) {
          unlinkSync(LOCK_FILE);
          continue;
        }
      } catch {
        continue; // released meanwhile
      }
      if (Date.now() > deadline) throw new Error(`netns: ${LOCK_FILE} held for 20 s; remove it if stale`);
      sleepSync(20);
    }
  }
  try {
    return fn();
  } finally {
    try {
      unlinkSync(LOCK_FILE);
    } catch {
      // broken by someone who thought us dead
    }
  }
}

function registrationFile(prefix: string): string {
  return join(FLEET_STATE_DIR, `${prefix}.json`);
}

function readRegistrations(): Registration[] {
  let names: string[];
  try {
    names = readdirSync(FLEET_STATE_DIR).filter((f) => f.endsWith(".json"));
  } catch {
    return [];
  }
  const out: Registration[] = [];
  for (const f of names) {
    try {
      out.push(JSON.parse(readFileSync(join(FLEET_STATE_DIR, f), "utf8")) as Registration);
    } catch {
      // half-written or removed meanwhile
    }
  }
  return out;
}

function registrationLive(r: Registration, existing: Set<string>): boolean {
  return pidAlive(r.pid) || r.namespaces.some((n) => existing.has(n));
}

/** Fleets registered right now whose process lives or whose namespaces exist (prefix and pid). */
export function activeFleets(): { prefix: string; pid: number }[] {
  const existing = new Set(listNetns());
  return readRegistrations()
    .filter((r) => registrationLive(r, existing))
    .map((r) => ({ prefix: r.prefix, pid: r.pid }));
}

interface RouteJson {
  type?: string;
  dst?: string;
  protocol?: string | number;
}

/** Routes of the root namespace's main table for the fleet range or inside it. */
function fleetRoutes(): RouteJson[] {
  const routes = JSON.parse(ipSync(["-j", "-4", "route", "show", "table", "main"]) || "[]") as RouteJson[];
  return routes.filter((r) => r.dst === FLEET_SUBNET || r.dst?.startsWith(`${NET}.`));
}

/** The blackhole route for the fleet range in the root namespace, if any, and whether it carries our tag. */
export function fleetBlackhole(): { present: boolean; ours: boolean } {
  const r = fleetRoutes().find((x) => x.dst === FLEET_SUBNET && x.type === "blackhole");
  return {
    present: r !== undefined,
    ours: r !== undefined && String(r.protocol) === String(FLEET_ROUTE_PROTO),
  };
}

/** Refuses a machine that already uses the fleet range in its root namespace (an address, or a real route). */
function assertRangeUnused(): void {
  const addrs = JSON.parse(ipSync(["-j", "-4", "addr", "show"]) || "[]") as {
    ifname: string;
    addr_info?: { local?: string }[];
  }[];
  for (const a of addrs)
    for (const i of a.addr_info ?? [])
      if (i.local?.startsWith(`${NET}.`))
        throw new Error(
          `netns: ${i.local} is on ${a.ifname} in the root namespace; ${FLEET_SUBNET} is in use here`,
        );
  for (const r of fleetRoutes())
    if (r.type !== "blackhole")
      throw new Error(`netns: the root namespace routes ${r.dst} already; ${FLEET_SUBNET} is in use here`);
}

function acquireRoute(reg: Registration): void {
  withLock(() => {
    assertRangeUnused();
    writeFileSync(registrationFile(reg.prefix), JSON.stringify(reg), { mode: 0o600 });
    if (!fleetBlackhole().present) {
      ipSync(["route", "add", "blackhole", FLEET_SUBNET, "proto", String(FLEET_ROUTE_PROTO)]);
    }
  });
}

function releaseRoute(prefix: string): void {
  withLock(() => {
    try {
      unlinkSync(registrationFile(prefix));
    } catch {
      // released already
    }
    const existing = new Set(listNetns());
    let live = 0;
    for (const r of readRegistrations()) {
      if (registrationLive(r, existing)) live++;
      else {
        try {
          unlinkSync(registrationFile(r.prefix)); // a fleet whose process died and whose namespaces are gone
        } catch {
          // gone
        }
      }
    }
    const route = fleetBlackhole();
    if (live === 0 && route.ours) {
      try {
        ipSync(["route", "del", "blackhole", FLEET_SUBNET, "proto", String(FLEET_ROUTE_PROTO)]);
      } catch {
        // removed meanwhile
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// teardown

function netnsPids(netns: string): number[] {
  try {
    return ipSync(["netns", "pids", netns])
      .split(/\s+/)
      .filter(Boolean)
      .map(Number)
      .filter((p) => p > 0 && p !== process.pid);
  } catch {
    return [];
  }
}

/**
 * Synchronously removes fleet `prefix`: SIGKILL to every process left in its namespaces (waiting up to 5 s
 * for them to go, so the namespaces and their veths are freed), `ip netns del` each, then the release of the
 * blackhole route. Safe to run again, and on a fleet that was only half made.
 */
export function teardownFleetSync(prefix: string, namespaces?: readonly string[]): void {
  const existing = listNetns();
  const ours = namespaces ?? existing.filter((n) => n.startsWith(`${prefix}-`) && isFleetName(prefix, n));
  const present = ours.filter((n) => existing.includes(n));
  const pids = present.flatMap(netnsPids);
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  const deadline = Date.now() + 5000;
  while (pids.some(pidAlive) && Date.now() < deadline) sleepSync(20);
  for (const n of present) {
    try {
      ipSync(["netns", "del", n]);
    } catch (err) {
      if (listNetns().includes(n)) throw err;
    }
  }
  releaseRoute(prefix);
}

function isFleetName(prefix: string, netns: string): boolean {
  const rest = netns.slice(prefix.length + 1);
  return rest === "br" || rest === "ctl" || /^h\d+$/.test(rest);
}

/** The argv the reaper runs after a SIGKILL: this module's CLI `down PREFIX` (through tsx when run from source). */
function reaperArgv(prefix: string): string[] {
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith(".ts")) {
    try {
      const tsx = createRequire(import.meta.url).resolve("tsx/cli");
      return [process.execPath, tsx, self, "down", prefix];
    } catch {
      // no tsx: fall back to deleting the namespaces only (the route goes with the next fleet's teardown)
      return ["ip", "netns", "del", `${prefix}-br`];
    }
  }
  return [process.execPath, self, "down", prefix];
}

// ---------------------------------------------------------------------------------------------------------
// startFleet

/**
 * Makes a fleet (as root): the bridge namespace, the controller namespace (203.0.113.1/24) and `hosts` host
 * namespaces (203.0.113.11/24, ...), a veth from each into the bridge, `lo` up everywhere, no default
 * route, and the blackhole route in the root namespace. Registered for cleanup at once, so a failure while
 * it is being made, or later in the test, still removes it.
 */
export async function startFleet(opts: StartFleetOptions): Promise<Fleet> {
  const { prefix, hosts } = opts;
  if (!PREFIX_PATTERN.test(prefix))
    throw new Error(`startFleet: prefix ${JSON.stringify(prefix)} must match ${PREFIX_PATTERN}`);
  if (!Number.isInteger(hosts) || hosts < 1 || hosts > MAX_HOSTS)
    throw new Error(`startFleet: hosts must be 1..${MAX_HOSTS}`);
  const avail = netnsAvailable();
  if (!avail.ok) throw new Error(`startFleet: ${avail.reason}`);

  const bridgeNetns = `${prefix}-br`;
  const controller: FleetNode = { name: "ctl", netns: `${prefix}-ctl`, address: FLEET_CONTROLLER_ADDRESS };
  const hostNodes: FleetNode[] = Array.from({ length: hosts }, (_, k) => ({
    name: `h${k + 1}`,
    netns: `${prefix}-h${k + 1}`,
    address: fleetHostAddress(k + 1),
  }));
  const nodes = [controller, ...hostNodes];
  const namespaces = [bridgeNetns, ...nodes.map((n) => n.netns)];

  // A fleet left behind by a dead process under the same prefix is removed; a live one is refused.
  const clash = listNetns().filter((n) => n.startsWith(`${prefix}-`) && isFleetName(prefix, n));
  if (clash.length > 0) {
    const reg = readRegistrations().find((r) => r.prefix === prefix);
    if (reg && !pidAlive(reg.pid)) teardownFleetSync(prefix, reg.namespaces);
    else
      throw new Error(
        `startFleet: namespaces ${clash.join(", ")} exist (a fleet with prefix ${prefix} is up${reg ? ` in pid ${reg.pid}` : ""}); use another prefix`,
      );
  }

  acquireRoute({ prefix, pid: process.pid, namespaces, startedAt: new Date().toISOString() });
  let done = false;
  const teardownSync = () => {
    if (done) return;
    teardownFleetSync(prefix, namespaces);
    done = true;
  };
  const untrack = trackCommand(reaperArgv(prefix), { run: teardownSync });

  try {
    for (const n of namespaces) await ip(["netns", "add", n]);
    await ip(["-n", bridgeNetns, "link", "set", "lo", "up"]);
    await ip(["-n", bridgeNetns, "link", "add", "br0", "type", "bridge"]);
    await ip(["-n", bridgeNetns, "link", "set", "br0", "up"]);
    await Promise.all(
      nodes.map(async (n) => {
        // both ends are made in their namespaces: nothing appears in the root namespace
        await ip([
          "link",
          "add",
          "eth0",
          "netns",
          n.netns,
          "type",
          "veth",
          "peer",
          "name",
          n.name,
          "netns",
          bridgeNetns,
        ]);
        await ip(["-n", bridgeNetns, "link", "set", n.name, "master", "br0"]);
        await ip(["-n", bridgeNetns, "link", "set", n.name, "up"]);
        await ip(["-n", n.netns, "link", "set", "lo", "up"]);
        await ip(["-n", n.netns, "addr", "add", `${n.address}/24`, "dev", "eth0"]);
        await ip(["-n", n.netns, "link", "set", "eth0", "up"]);
      }),
    );
    // the kernel adds only the connected /24; make sure nothing else is there
    for (const n of namespaces) {
      const def = await ip(["-n", n, "route", "show", "default"]);
      if (def.trim()) throw new Error(`startFleet: ${n} has a default route: ${def.trim()}`);
    }
  } catch (err) {
    untrack();
    teardownSync();
    throw err;
  }

  const resolveNode = (where: FleetNode | string): FleetNode => {
    if (typeof where !== "string") return where;
    const n = nodes.find((x) => x.name === where || x.netns === where);
    if (!n)
      throw new Error(`fleet ${prefix}: no node ${where} (nodes: ${nodes.map((x) => x.name).join(", ")})`);
    return n;
  };

  return {
    prefix,
    subnet: FLEET_SUBNET,
    bridgeNetns,
    controller,
    hosts: hostNodes,
    namespaces,
    node: resolveNode,
    exec: (where, command, args = [], o = {}) => execInNetns(resolveNode(where).netns, command, args, o),
    spawn: (where, o) => spawnService({ ...o, netns: resolveNode(where).netns }),
    connect: (where, host, port, timeoutMs) =>
      connectFromNetns(resolveNode(where).netns, host, port, timeoutMs),
    async teardown() {
      teardownSync();
      untrack();
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// CLI

async function main(argv: string[]): Promise<number> {
  const [cmd, prefix, n] = argv;
  if (cmd === "down" && prefix) {
    teardownFleetSync(prefix);
    return 0;
  }
  if (cmd === "list") {
    for (const f of activeFleets()) process.stdout.write(`${f.prefix}\tpid ${f.pid}\n`);
    return 0;
  }
  if (cmd === "up" && prefix) {
    const fleet = await startFleet({ prefix, hosts: Number(n ?? 3) });
    for (const node of [fleet.controller, ...fleet.hosts])
      process.stdout.write(`${node.netns}\t${node.address}\n`);
    process.stdout.write(
      `up; \`ip netns exec ${fleet.controller.netns} CMD\` runs CMD on the controller; Ctrl-C tears down\n`,
    );
    await new Promise<void>((r) => {
      for (const s of ["SIGINT", "SIGTERM"] as const) process.once(s, () => r());
    });
    await fleet.teardown();
    return 0;
  }
  process.stderr.write("usage: netns.ts up PREFIX [N] | down PREFIX | list   (as root)\n");
  return 2;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`${(err as Error).message}\n`);
      process.exit(1);
    },
  );
}
