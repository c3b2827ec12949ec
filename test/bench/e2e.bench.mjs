// npm run bench:e2e [-- --volumes N --max-seconds S --pg --decision-hosts H ...]: the end-to-end benchmark of
// provisioning (docs/benchmarks.md). It builds the apps, starts a private cluster in a temp directory (its own
// nats-server with JetStream on free ports, a controller on embedded PGlite or PostgreSQL, three agents with a
// dir pool each, laid out as `npm run up` lays them out) and drives it with a plain @grpc/grpc-js client on
// proto/stowage/v1. Bare `qemu-img create` on the same filesystem is the baseline, measured in the same run.
// stdout: one JSON line per measure; stderr: progress. Every phase stops at --max-seconds and says so
// ("capped": true). Everything it starts (processes, temp directory, the fresh PostgreSQL database) is removed at
// the end, on failure and on Ctrl-C.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { AGENT_ENV, AGENT_NODE_ARGS } from "../../scripts/agent-runtime.mjs";

const ROOT = resolve(import.meta.dirname, "../..");
const CONTROLLER = join(ROOT, "apps/controller/dist/main.js");
const AGENT = join(ROOT, "apps/agent/dist/main.js");

const USAGE = `usage: npm run bench:e2e -- [options]
  --volumes N            growth round target, counting every volume of the run (default 5000)
  --max-seconds S        time cap of each phase (default 600); a phase that hits it says "capped": true
  --pg                   PostgreSQL instead of embedded PGlite: STOWAGE_DATABASE_URL if set (used as is), else a
                         fresh database in postgresql://postgres@127.0.0.1:5432 (dropped at the end)
  --size BYTES           size of every volume and baseline image; suffixes K, M, G (default 16M)
  --samples N            sequential creates for the concurrency-1 latency, and bare qemu-img runs (default 50)
  --burst N              creates of the concurrency-32 burst (default 128)
  --growth-concurrency N creates in flight during the growth round (default 8)
  --window N             creates per rate window of the growth round (default 100)
  --idle-seconds S       idle measure length (default 30)
  --decision-hosts H     also measure the decision at H simulated hosts with 4 pools each (default 0: skip)
  --decision-samples N   dry runs and creates timed at H hosts (default 50)
  --inventory-interval-ms MS  agents' full-inventory interval (default 300000, the agent's default, as \`npm run up\`)
  --create-timeout S     one create's wait for available (default 120)
  --skip-build           do not run \`npx turbo run build\` first
  --keep                 keep the temp directory (logs) and the database`;

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      volumes: { type: "string", default: "5000" },
      "max-seconds": { type: "string", default: "600" },
      pg: { type: "boolean", default: false },
      size: { type: "string", default: "16M" },
      samples: { type: "string", default: "50" },
      burst: { type: "string", default: "128" },
      "growth-concurrency": { type: "string", default: "8" },
      window: { type: "string", default: "100" },
      "idle-seconds": { type: "string", default: "30" },
      "decision-hosts": { type: "string", default: "0" },
      "decision-samples": { type: "string", default: "50" },
      "inventory-interval-ms": { type: "string", default: "300000" },
      "create-timeout": { type: "string", default: "120" },
      "skip-build": { type: "boolean", default: false },
      keep: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  }));
} catch (err) {
  process.stderr.write(`${err.message}\n${USAGE}\n`);
  process.exit(2);
}
if (opts.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

function intOpt(name, min) {
  const v = Number(opts[name]);
  if (!Number.isInteger(v) || v < min) {
    process.stderr.write(`--${name} must be an integer >= ${min}, not ${JSON.stringify(opts[name])}\n`);
    process.exit(2);
  }
  return v;
}

function sizeOpt(text) {
  const m = /^(\d+)([KMG]?)$/i.exec(text);
  if (!m) {
    process.stderr.write(`--size must be a number of bytes with an optional K, M or G, not ${text}\n`);
    process.exit(2);
  }
  return Number(m[1]) * 1024 ** " KMG".indexOf((m[2] || " ").toUpperCase());
}

const cfg = {
  volumes: intOpt("volumes", 1),
  maxMs: intOpt("max-seconds", 1) * 1000,
  size: sizeOpt(opts.size),
  samples: intOpt("samples", 1),
  burst: intOpt("burst", 1),
  growthConcurrency: intOpt("growth-concurrency", 1),
  window: intOpt("window", 2),
  idleMs: intOpt("idle-seconds", 1) * 1000,
  decisionHosts: intOpt("decision-hosts", 0),
  decisionSamples: intOpt("decision-samples", 1),
  inventoryIntervalMs: intOpt("inventory-interval-ms", 200),
  createTimeoutMs: intOpt("create-timeout", 1) * 1000,
};

// ---------------------------------------------------------------------------------------------- output

function progress(msg) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

const round = (x, digits = 2) =>
  x === undefined || x === null || !Number.isFinite(x) ? null : Number(x.toFixed(digits));

function emit(measure, fields) {
  process.stdout.write(`${JSON.stringify({ measure, ...fields })}\n`);
}

function quantile(values, q) {
  if (values.length === 0) return undefined;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

const latencyStats = (ms) => ({
  n: ms.length,
  p50_ms: round(quantile(ms, 0.5)),
  p99_ms: round(quantile(ms, 0.99)),
  max_ms: round(ms.length ? Math.max(...ms) : undefined),
});

// ---------------------------------------------------------------------------------------------- build

if (!opts["skip-build"]) {
  progress("building (npx turbo run build)");
  const b = spawnSync("npx", ["turbo", "run", "build", "--output-logs=errors-only"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  if (b.status !== 0) {
    process.stderr.write(`build failed:\n${b.stdout ?? ""}${b.stderr ?? ""}${b.error ?? ""}\n`);
    process.exit(1);
  }
}
const kit = await import("@stowage/testkit");

// ---------------------------------------------------------------------------------------------- processes

/** Extra node flags for a profiling run, e.g. BENCH_CONTROLLER_NODE_ARGS="--require ./profile.cjs" (docs/benchmarks.md). */
function extraNodeArgs(name) {
  const v = process.env[name]?.trim();
  return v ? v.split(/\s+/) : [];
}

const CLK_TCK = Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100;

/** CPU seconds of a process (self, and its reaped children such as qemu-img) from /proc/PID/stat. */
function cpuOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return {
      self: (Number(f[11]) + Number(f[12])) / CLK_TCK,
      children: (Number(f[13]) + Number(f[14])) / CLK_TCK,
    };
  } catch {
    return undefined;
  }
}

/** Resident set size in MiB from /proc/PID/status VmRSS. */
function rssOf(pid) {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Samples the controller's and the agents' CPU and RSS over one phase: `stop()` returns CPU as a percentage of
 * one core over the phase's wall time, and RSS first, last and peak (sampled every second).
 */
function usageMeter(cluster) {
  const procs = () => [
    { name: "controller", pid: cluster.controller.pid },
    ...cluster.agents.map((a) => ({ name: a.name, pid: a.service.pid })),
  ];
  const t0 = performance.now();
  const state = new Map();
  const sample = () => {
    for (const p of procs()) {
      const rss = rssOf(p.pid);
      let s = state.get(p.name);
      if (!s || s.pid !== p.pid) {
        s = { pid: p.pid, cpu0: cpuOf(p.pid), rssFirst: rss, rssPeak: rss, rssLast: rss };
        state.set(p.name, s);
      }
      if (rss !== undefined) {
        s.rssLast = rss;
        s.rssPeak = Math.max(s.rssPeak ?? 0, rss);
      }
      s.cpuLast = cpuOf(p.pid) ?? s.cpuLast;
    }
  };
  sample();
  const timer = setInterval(sample, 1000);
  return {
    stop() {
      clearInterval(timer);
      sample();
      const wall = (performance.now() - t0) / 1000;
      const out = {};
      for (const [name, s] of state) {
        const c0 = s.cpu0;
        const c1 = s.cpuLast;
        out[name] = {
          cpu_pct: c0 && c1 ? round(((c1.self - c0.self) / wall) * 100, 1) : null,
          children_cpu_pct: c0 && c1 ? round(((c1.children - c0.children) / wall) * 100, 1) : null,
          rss_mib_first: round(s.rssFirst, 1),
          rss_mib_last: round(s.rssLast, 1),
          rss_mib_peak: round(s.rssPeak, 1),
        };
      }
      return { seconds: round(wall, 1), processes: out };
    },
  };
}

// ---------------------------------------------------------------------------------------------- cluster

/** The layout of `npm run up` (scripts/local-cluster.mjs): three hosts, each with its own NUMA layout. */
const HOSTS = [
  { name: "node1", zone: "zone-a", nodes: 2, cpusPerNode: 2, poolNode: 0 },
  { name: "node2", zone: "zone-a", nodes: 2, cpusPerNode: 4, poolNode: 1 },
  { name: "node3", zone: "zone-b", nodes: 4, cpusPerNode: 2, poolNode: 2 },
];
const STOP_TIMEOUT_MS = 20_000;

async function startCluster(dir, databaseUrl) {
  const nats = await kit.startNats({ dir: join(dir, "nats") });
  const [grpcPort, metricsPort] = await kit.freePorts(2);
  const url = `http://127.0.0.1:${grpcPort}`;
  const baseEnv = {
    STOWAGE_GRPC_LISTEN: `127.0.0.1:${grpcPort}`,
    STOWAGE_METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
    STOWAGE_DATA_DIR: join(dir, "controller"),
    STOWAGE_DATABASE_URL: databaseUrl,
    STOWAGE_NATS_URL: nats.url,
  };
  const cluster = {
    dir,
    nats,
    grpcAddress: `127.0.0.1:${grpcPort}`,
    metricsUrl: `http://127.0.0.1:${metricsPort}`,
    controller: undefined,
    agents: [],
    /** Spawns the controller; `ready` resolves once /readyz answers. Extra env for one phase. */
    spawnController(extraEnv = {}) {
      const service = kit.spawnService({
        name: "controller",
        command: process.execPath,
        args: [...extraNodeArgs("BENCH_CONTROLLER_NODE_ARGS"), CONTROLLER],
        env: { ...baseEnv, ...extraEnv },
        readyWhen: `${cluster.metricsUrl}/readyz`,
        readyTimeoutMs: 180_000,
        stopTimeoutMs: STOP_TIMEOUT_MS,
        logFile: join(dir, "controller.log"),
      });
      return service.then((s) => {
        cluster.controller = s;
        return s;
      });
    },
    async startAgent(h, i) {
      const base = join(dir, "hosts", h.name);
      const sysroot = join(base, "sysroot");
      // Made once: a restarted agent finds the same host.
      if (!existsSync(join(sysroot, "sys")))
        await kit.makeFakeSysfs(sysroot, { nodes: h.nodes, cpusPerNode: h.cpusPerNode });
      const poolDir = join(dir, "pools", h.name, "default");
      mkdirSync(poolDir, { recursive: true });
      const configFile = join(base, "agent.json");
      writeFileSync(
        configFile,
        JSON.stringify({
          hostName: h.name,
          zone: h.zone,
          controllerUrl: url,
          natsUrl: nats.url,
          sysfsRoot: join(sysroot, "sys"),
          procRoot: join(sysroot, "proc"),
          metricsListen: "127.0.0.1:0",
          inventoryIntervalMs: cfg.inventoryIntervalMs,
          pools: [
            { name: "default", kind: "dir", path: poolDir, numaNode: h.poolNode, labels: { tier: "local" } },
          ],
        }),
      );
      const service = await kit.spawnService({
        name: `agent-${h.name}`,
        command: process.execPath,
        // As `npm run up` starts its agents (scripts/agent-runtime.mjs).
        args: [...AGENT_NODE_ARGS, ...extraNodeArgs("BENCH_AGENT_NODE_ARGS"), AGENT, "--config", configFile],
        env: AGENT_ENV,
        readyWhen: (line) => line.includes("registered with the controller"),
        readyTimeoutMs: 180_000,
        stopTimeoutMs: STOP_TIMEOUT_MS,
        logFile: join(base, "agent.log"),
      });
      cluster.agents[i] = { name: h.name, poolDir, service };
      return cluster.agents[i];
    },
    startAgents() {
      return Promise.all(HOSTS.map((h, i) => cluster.startAgent(h, i)));
    },
    async stop() {
      await Promise.all(cluster.agents.map((a) => a.service.stop()));
      await cluster.controller?.stop();
      await nats.stop();
    },
  };
  await cluster.spawnController();
  await cluster.startAgents();
  return cluster;
}

// ---------------------------------------------------------------------------------------------- gRPC client

function connect(address) {
  const def = protoLoader.loadSync(
    ["stowage/v1/volume.proto", "stowage/v1/host.proto", "stowage/v1/agent.proto"],
    { includeDirs: [join(ROOT, "proto")], longs: String, enums: String, defaults: true, oneofs: true },
  );
  const pkg = grpc.loadPackageDefinition(def).stowage.v1;
  // Dry runs at thousands of hosts answer with every pool's verdict: no limit on what is received.
  // A controller restarted by the bench is reconnected to within 100 ms, not after grpc-js's backoff of up to
  // two minutes, so the time until ListVolumes answers is the controller's.
  const options = {
    "grpc.max_receive_message_length": -1,
    "grpc.max_send_message_length": -1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 100,
  };
  const credentials = grpc.credentials.createInsecure();
  return {
    volumes: new pkg.VolumeService(address, credentials, options),
    hosts: new pkg.HostService(address, credentials, options),
    agents: new pkg.AgentService(address, credentials, options),
    close() {
      this.volumes.close();
      this.hosts.close();
      this.agents.close();
    },
  };
}

/** One unary call; rejects with the grpc-js ServiceError. */
function call(client, method, req, timeoutMs = 60_000) {
  return new Promise((resolveCall, reject) =>
    client[method](req, { deadline: Date.now() + timeoutMs }, (err, res) =>
      err ? reject(err) : resolveCall(res),
    ),
  );
}

const errText = (err) =>
  err?.details ? `${grpc.status[err.code] ?? err.code}: ${err.details}` : String(err?.message ?? err);

/**
 * Waits for volumes to become available through one WatchVolumes stream (every volume, so one stream serves
 * any number of creates). A waiter is keyed by name, registered before its CreateVolume call, so an event that
 * beats the call's answer is not lost. As a safety net, a waiter older than 2 s is also checked with GetVolume
 * every 2 s; `missedByWatch` counts the volumes only that poll saw available.
 */
function volumeWatcher(api) {
  const waiters = new Map();
  let stream;
  let closed = false;
  let missedByWatch = 0;
  const settle = (name, volume, how) => {
    const w = waiters.get(name);
    if (!w) return;
    if (volume.state === "VOLUME_STATE_AVAILABLE") {
      waiters.delete(name);
      if (how === "poll") missedByWatch++;
      w.resolve({ at: performance.now(), poolId: volume.poolId });
    } else if (volume.state === "VOLUME_STATE_ERROR") {
      waiters.delete(name);
      w.reject(new Error(`volume ${name} went to error: ${volume.error?.message ?? "no message"}`));
    }
  };
  const open = () => {
    if (closed) return;
    stream = api.volumes.WatchVolumes({});
    stream.on("data", (ev) => ev.volume && settle(ev.volume.name, ev.volume, "watch"));
    stream.on("error", () => {});
    stream.on("end", () => {});
    stream.on("close", () => {
      if (!closed) setTimeout(open, 500).unref();
    });
  };
  const poller = setInterval(() => {
    const now = performance.now();
    for (const [name, w] of waiters) {
      if (now - w.since < 2000 || w.polling) continue;
      w.polling = true;
      call(api.volumes, "GetVolume", { volume: name }, 5000)
        .then((r) => settle(name, r.volume, "poll"))
        .catch(() => {})
        .finally(() => {
          w.polling = false;
        });
    }
  }, 2000);
  poller.unref();
  open();
  return {
    get missedByWatch() {
      return missedByWatch;
    },
    get pending() {
      return waiters.size;
    },
    wait(name, timeoutMs) {
      return new Promise((resolveWait, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(name);
          reject(new Error(`volume ${name} not available after ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.set(name, {
          since: performance.now(),
          resolve: (v) => {
            clearTimeout(timer);
            resolveWait(v);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        });
      });
    },
    forget(name) {
      waiters.delete(name);
    },
    close() {
      closed = true;
      clearInterval(poller);
      stream?.cancel();
    },
  };
}

// ---------------------------------------------------------------------------------------------- work loops

/** Runs `fn(i)` for i = 0..count-1 with `concurrency` in flight, stopping new work at `deadline` (ms). */
async function runConcurrent(count, concurrency, deadline, fn) {
  let next = 0;
  let capped = false;
  const errors = [];
  const worker = async () => {
    while (next < count) {
      if (performance.now() >= deadline) {
        capped = true;
        return;
      }
      const i = next++;
      try {
        await fn(i);
      } catch (err) {
        errors.push(errText(err));
        if (errors.length >= 20) {
          next = count;
          return;
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return { started: next, capped, errors };
}

let seq = 0;
const volumeName = (prefix) => `${prefix}-${String(seq++).padStart(6, "0")}`;

// ---------------------------------------------------------------------------------------------- phases

async function baseline(dir) {
  const imgDir = join(dir, "baseline");
  mkdirSync(imgDir, { recursive: true });
  const create = (i) =>
    new Promise((resolveRun, reject) => {
      const child = spawn(
        "qemu-img",
        ["create", "-q", "-f", "qcow2", join(imgDir, `img-${i}.qcow2`), String(cfg.size)],
        {
          stdio: ["ignore", "ignore", "pipe"],
        },
      );
      let stderr = "";
      child.stderr.on("data", (d) => {
        stderr += d;
      });
      child.on("error", reject);
      child.on("exit", (code) =>
        code === 0 ? resolveRun() : reject(new Error(`qemu-img exited ${code}: ${stderr}`)),
      );
    });
  const deadline = performance.now() + cfg.maxMs;
  const ms = [];
  const c1 = await runConcurrent(cfg.samples, 1, deadline, async (i) => {
    const t0 = performance.now();
    await create(i);
    ms.push(performance.now() - t0);
  });
  const n8 = Math.max(cfg.samples * 4, 100);
  const t0 = performance.now();
  const c8 = await runConcurrent(n8, 8, deadline, (i) => create(cfg.samples + i));
  const seconds = (performance.now() - t0) / 1000;
  rmSync(imgDir, { recursive: true, force: true });
  const done8 = c8.started - c8.errors.length;
  const out = {
    c1: { ...latencyStats(ms), capped: c1.capped },
    filesPerS8: done8 / seconds,
  };
  emit("baseline_qemu_img", {
    size_bytes: cfg.size,
    concurrency: 1,
    ...out.c1,
    errors: c1.errors.slice(0, 3),
  });
  emit("baseline_qemu_img", {
    size_bytes: cfg.size,
    concurrency: 8,
    files: done8,
    seconds: round(seconds),
    files_per_s: round(out.filesPerS8, 1),
    capped: c8.capped,
    errors: c8.errors.slice(0, 3),
  });
  return out;
}

/**
 * The creating side of every phase: one CreateVolume, then the wait for `available`. Returns the call's time
 * (until the answer) and the whole time (until the watch says available), in ms, and the chosen pool.
 */
function creator(api, watcher, counter) {
  return async (name, constraints) => {
    const t0 = performance.now();
    const available = watcher.wait(name, cfg.createTimeoutMs);
    available.catch(() => {});
    let res;
    try {
      res = await call(api.volumes, "CreateVolume", {
        name,
        sizeBytes: String(cfg.size),
        format: "VOLUME_FORMAT_QCOW2",
        requestId: `bench-${name}`,
        ...(constraints ? { constraints } : {}),
      });
    } catch (err) {
      watcher.forget(name);
      throw err;
    }
    const tCall = performance.now();
    if (res.volume?.state === "VOLUME_STATE_AVAILABLE") watcher.forget(name);
    const done = res.volume?.state === "VOLUME_STATE_AVAILABLE" ? { at: tCall } : await available;
    counter.total++;
    counter.times.push({ count: counter.total, at: done.at });
    return { callMs: tCall - t0, totalMs: done.at - t0, poolId: res.volume?.poolId ?? res.placement?.poolId };
  };
}

async function spreadPhase(create) {
  const n = 30;
  const t0 = performance.now();
  const results = await Promise.allSettled(
    Array.from({ length: n }, () => create(volumeName("spread"), { strategy: "PLACEMENT_STRATEGY_SPREAD" })),
  );
  const byPool = {};
  const errors = [];
  for (const r of results) {
    if (r.status === "fulfilled") byPool[r.value.poolId] = (byPool[r.value.poolId] ?? 0) + 1;
    else errors.push(errText(r.reason));
  }
  for (const a of HOSTS) byPool[`${a.name}/default`] ??= 0;
  const counts = Object.values(byPool);
  emit("spread", {
    volumes: n,
    strategy: "spread",
    pools: byPool,
    min: Math.min(...counts),
    max: Math.max(...counts),
    target: "8-12 each",
    ok: counts.every((c) => c >= 8 && c <= 12),
    seconds: round((performance.now() - t0) / 1000),
    errors: errors.slice(0, 3),
  });
}

async function latencyPhase(create, base, counter) {
  const deadline = performance.now() + cfg.maxMs;
  const total = [];
  const calls = [];
  const at = counter.total;
  const r = await runConcurrent(cfg.samples, 1, deadline, async () => {
    const x = await create(volumeName("lat"));
    total.push(x.totalMs);
    calls.push(x.callMs);
  });
  const s = latencyStats(total);
  const bp50 = base.c1.p50_ms;
  const bp99 = base.c1.p99_ms;
  emit("create_latency", {
    concurrency: 1,
    ...s,
    call_p50_ms: round(quantile(calls, 0.5)),
    call_p99_ms: round(quantile(calls, 0.99)),
    baseline_p50_ms: bp50,
    baseline_p99_ms: bp99,
    ratio_p50: round(s.p50_ms / bp50),
    ratio_p99: round(s.p99_ms / bp99),
    target_p50_ms: round(1.2 * bp50 + 5),
    ok_p50: s.p50_ms !== null && s.p50_ms <= 1.2 * bp50 + 5,
    ok_p99: s.p99_ms !== null && s.p99_ms < 3 * bp99,
    from_volumes: at,
    capped: r.capped,
    errors: r.errors.slice(0, 3),
  });
}

async function burstPhase(create, concurrency, count, base, counter) {
  const deadline = performance.now() + cfg.maxMs;
  const at = counter.total;
  const ms = [];
  const t0 = performance.now();
  const r = await runConcurrent(count, concurrency, deadline, async () => {
    ms.push((await create(volumeName(`c${concurrency}`))).totalMs);
  });
  const seconds = (performance.now() - t0) / 1000;
  const perS = ms.length / seconds;
  emit("create_throughput", {
    concurrency,
    volumes: ms.length,
    seconds: round(seconds),
    volumes_per_s: round(perS),
    ...latencyStats(ms),
    baseline_files_per_s_c8: round(base.filesPerS8, 1),
    ratio_to_baseline_c8: round(perS / base.filesPerS8, 3),
    from_volumes: at,
    capped: r.capped,
    errors: r.errors.slice(0, 3),
  });
}

async function growthPhase(cluster, create, base, counter) {
  const target = cfg.volumes;
  const from = counter.total;
  if (from >= target) {
    emit("growth", { skipped: `already ${from} volumes, --volumes ${target}` });
    return;
  }
  const deadline = performance.now() + cfg.maxMs;
  const meter = usageMeter(cluster);
  const startIndex = counter.times.length;
  const t0 = performance.now();
  let lastReport = t0;
  const r = await runConcurrent(target - from, cfg.growthConcurrency, deadline, async () => {
    await create(volumeName("grow"));
    if (performance.now() - lastReport > 10_000) {
      lastReport = performance.now();
      progress(`  growth: ${counter.total} volumes, ${watcherPending()} waiting`);
    }
  });
  const usage = meter.stop();
  const times = counter.times.slice(startIndex).sort((a, b) => a.at - b.at);
  // Rate over a window of completions: (b - a) creates between the a-th and the b-th completion of the round.
  const rate = (a, b) => {
    if (b >= times.length || a < 0 || b <= a) return null;
    return round((b - a) / ((times[b].at - times[a].at) / 1000));
  };
  // The first window starts at the 100th volume of the cluster (or at the round's start, if later). A round cut
  // short by its cap has fewer creates than two windows after that mark: the windows shrink to half of them each
  // (`window` says how many creates each rate is over).
  // A round that ends before 100 volumes and a few more is measured from its start.
  const mark = Math.max(0, 100 - from - 1);
  const firstStart = times.length - 1 - mark >= 4 ? mark : 0;
  const w = Math.max(2, Math.min(cfg.window, Math.floor((times.length - 1 - firstStart) / 2)));
  const first = rate(firstStart, firstStart + w);
  const last = times.length > w ? rate(times.length - 1 - w, times.length - 1) : null;
  const series = [];
  for (let k = 0; k + w < times.length; k += Math.max(w, Math.ceil(times.length / 10))) {
    series.push({ from_volumes: from + k, volumes_per_s: rate(k, k + w) });
  }
  const agents = cluster.agents.map((a) => {
    const u = usage.processes[a.name];
    return { name: a.name, ...u, rss_ratio_last_first: round(u.rss_mib_last / u.rss_mib_first) };
  });
  emit("growth", {
    from_volumes: from,
    reached_volumes: counter.total,
    target_volumes: target,
    concurrency: cfg.growthConcurrency,
    seconds: usage.seconds,
    window: w,
    rate_first: first,
    rate_first_from_volumes: from + firstStart + 1,
    rate_last: last,
    rate_last_to_volumes: from + times.length,
    ratio_last_first: first && last ? round(last / first) : null,
    baseline_files_per_s_c8: round(base.filesPerS8, 1),
    series,
    controller: usage.processes.controller,
    agents,
    capped: r.capped,
    errors: r.errors.slice(0, 3),
  });
  emit("create_throughput", {
    concurrency: cfg.growthConcurrency,
    volumes: w,
    volumes_per_s: first,
    capped: r.capped,
    from_volumes: from + firstStart + 1,
    source: "the growth round's first window",
    baseline_files_per_s_c8: round(base.filesPerS8, 1),
    ratio_to_baseline_c8: first ? round(first / base.filesPerS8, 3) : null,
    target: "at concurrency 8, at least half of bare qemu-img's files/s",
    ok: cfg.growthConcurrency === 8 && first !== null && first >= base.filesPerS8 / 2,
  });
}

async function idlePhase(cluster, api) {
  const vols = await countVolumesByHost(api);
  const meter = usageMeter(cluster);
  await sleep(cfg.idleMs);
  const usage = meter.stop();
  emit("idle", {
    seconds: usage.seconds,
    agents: cluster.agents.map((a) => ({
      name: a.name,
      volumes: vols[a.name] ?? 0,
      ...usage.processes[a.name],
    })),
    controller: usage.processes.controller,
    target: "agent < 80 MiB RSS and < 1% of a core at 1,000 volumes",
  });
}

/** Waits until the controller answers (after a restart). */
async function waitForApi(api, timeoutMs = 60_000) {
  const end = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await call(api.hosts, "ListHosts", { pageSize: 1 }, 2000);
    } catch (err) {
      if (performance.now() > end) throw err;
      await sleep(100);
    }
  }
}

async function countVolumesByHost(api) {
  const by = {};
  let pageToken = "";
  do {
    const r = await call(api.volumes, "ListVolumes", { pageSize: 1000, pageToken }, 120_000);
    for (const v of r.volumes) by[v.hostId] = (by[v.hostId] ?? 0) + 1;
    pageToken = r.nextPageToken;
  } while (pageToken);
  return by;
}

async function restartPhase(cluster, api, counter) {
  const volumes = counter.total;
  const stopOne = async (service) => {
    const t0 = performance.now();
    const code = await service.stop("SIGTERM");
    const ms = performance.now() - t0;
    return {
      exit_ms: round(ms, 0),
      exit_code: code,
      signal: service.signalCode,
      sigkill: service.signalCode === "SIGKILL" || ms >= STOP_TIMEOUT_MS,
    };
  };
  progress("  stopping the agents (SIGTERM)");
  const agentsStop = await Promise.all(
    cluster.agents.map(async (a) => ({ name: a.name, ...(await stopOne(a.service)) })),
  );
  progress("  stopping the controller (SIGTERM)");
  const controllerStop = await stopOne(cluster.controller);

  progress("  starting the controller and the agents again");
  const t0 = performance.now();
  const controllerReady = cluster.spawnController().then(() => performance.now() - t0);
  // ListVolumes from the moment the controller is spawned until it answers.
  const listed = (async () => {
    for (;;) {
      try {
        const r = await call(api.volumes, "ListVolumes", {}, 2000);
        return { ms: performance.now() - t0, n: r.volumes.length };
      } catch {
        if (performance.now() - t0 > cfg.maxMs) return { ms: null, n: 0 };
        await sleep(50);
      }
    }
  })();
  // Host states, polled from the controller's start until 20 s after the last agent registered (the default
  // down grace is 15 s): a host marked down at any moment of the restart is seen.
  const seen = {};
  const registered = HOSTS.map(() => undefined);
  let allUpMs = null;
  let pollUntil = Number.POSITIVE_INFINITY;
  const polling = (async () => {
    while (performance.now() < pollUntil) {
      try {
        const r = await call(api.hosts, "ListHosts", {}, 2000);
        const states = r.hosts.map((h) => [h.id, h.state]);
        for (const [id, state] of states) {
          seen[id] ??= {};
          seen[id][state] = (seen[id][state] ?? 0) + 1;
        }
        const allUp = states.length >= HOSTS.length && states.every(([, s]) => s === "HOST_STATE_UP");
        if (allUpMs === null && allUp && registered.every(Boolean)) allUpMs = performance.now() - t0;
      } catch {
        // not answering yet
      }
      await sleep(250);
    }
  })();
  let readyMs;
  try {
    readyMs = await controllerReady;
    await Promise.all(
      HOSTS.map(async (h, i) => {
        await cluster.startAgent(h, i);
        registered[i] = { name: h.name, registered_ms: round(performance.now() - t0, 0) };
      }),
    );
  } finally {
    pollUntil = performance.now() + 20_000;
  }
  await polling;
  const list = await listed;
  const down = Object.entries(seen)
    .filter(([, s]) => s.HOST_STATE_DOWN)
    .map(([id]) => id);
  emit("restart", {
    volumes,
    agents_stop: agentsStop,
    controller_stop: controllerStop,
    controller_ready_ms: round(readyMs, 0),
    list_volumes_ms: round(list.ms, 0),
    list_volumes_returned: list.n,
    agents_registered: registered,
    all_up_ms: round(allUpMs, 0),
    hosts_marked_down: down,
    host_states_seen: seen,
    target: "every host stays up; ListVolumes within 5 s",
    ok: down.length === 0 && list.ms !== null && list.ms <= 5000,
  });
}

/** Reads the scheduler's decision histogram (seconds) from the controller's /metrics: bucket -> count. */
async function schedulerHistogram(cluster) {
  const text = await (await fetch(`${cluster.metricsUrl}/metrics`)).text();
  const buckets = [];
  let sum = 0;
  let count = 0;
  let name;
  for (const line of text.split("\n")) {
    const m = /^(stowage_scheduler\w*duration_seconds)_(bucket|sum|count)(\{[^}]*\})? (\S+)/.exec(line);
    if (!m) continue;
    name = m[1];
    if (m[2] === "bucket") {
      const le = /le="([^"]+)"/.exec(m[3] ?? "")?.[1];
      buckets.push({ le: le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le), n: Number(m[4]) });
    } else if (m[2] === "sum") sum = Number(m[4]);
    else count = Number(m[4]);
  }
  return { name, buckets, sum, count };
}

/** The difference of two histogram reads: count, mean and the bucket bounds holding p50 and p99 (ms). */
function histogramDelta(a, b) {
  const count = b.count - a.count;
  if (!b.name || count <= 0) return { metric: b.name ?? null, count: 0 };
  const le = (q) => {
    for (const bb of b.buckets) {
      const before = a.buckets.find((x) => x.le === bb.le)?.n ?? 0;
      if (bb.n - before >= q * count) return Number.isFinite(bb.le) ? round(bb.le * 1000, 3) : "+Inf";
    }
    return null;
  };
  return {
    metric: b.name,
    count,
    mean_ms: round(((b.sum - a.sum) / count) * 1000, 3),
    p50_le_ms: le(0.5),
    p99_le_ms: le(0.99),
  };
}

async function decisionPhase(cluster, api) {
  const hosts = cfg.decisionHosts;
  // The simulated hosts send no heartbeats: this phase's controller waits a day before it marks a host down.
  progress("  restarting the controller with STOWAGE_HOST_DOWN_AFTER_MS=86400000 (simulated hosts stay up)");
  await cluster.controller.stop("SIGTERM");
  await cluster.spawnController({ STOWAGE_HOST_DOWN_AFTER_MS: "86400000" });
  await waitForApi(api);
  const GiB = 1024 ** 3;
  const deadline = performance.now() + cfg.maxMs;
  const t0 = performance.now();
  let lastReport = t0;
  let registered = 0;
  const reg = await runConcurrent(hosts, 16, deadline, async (i) => {
    const name = `sim${String(i).padStart(5, "0")}`;
    await call(api.agents, "RegisterAgent", {
      host: {
        name,
        zone: `zone-${"abc"[i % 3]}`,
        numaNodes: [0, 1].map((id) => ({
          id,
          cpuList: id === 0 ? "0-15" : "16-31",
          cpus: Array.from({ length: 16 }, (_, k) => id * 16 + k),
          memoryBytes: String(128 * GiB),
          distances: id === 0 ? [10, 21] : [21, 10],
        })),
        cpuCount: 32,
        memoryBytes: String(256 * GiB),
        agentVersion: "bench-simulated",
      },
      pools: [0, 1, 2, 3].map((p) => {
        const total = (2 + ((i * 7 + p * 3) % 9)) * 1024 * GiB;
        const used = Math.floor(total * (((i + p) % 10) / 20));
        return {
          name: `pool${p}`,
          kind: "POOL_KIND_DIR",
          numaNode: p % 2,
          healthy: true,
          totalBytes: String(total),
          usedBytes: String(used),
          freeBytes: String(total - used),
          provisionedBytes: String(used),
          formats: ["VOLUME_FORMAT_QCOW2", "VOLUME_FORMAT_RAW"],
          labels: { tier: p < 2 ? "ssd" : "hdd" },
        };
      }),
    });
    registered++;
    if (performance.now() - lastReport > 10_000) {
      lastReport = performance.now();
      progress(`  registered ${registered} simulated hosts`);
    }
  });
  const setupS = (performance.now() - t0) / 1000;
  progress(`  ${registered} simulated hosts in ${round(setupS, 1)} s; timing dry runs and creates`);
  const timed = async (dryRun) => {
    const before = await schedulerHistogram(cluster);
    const ms = [];
    let candidates = 0;
    let considered = 0;
    const r = await runConcurrent(cfg.decisionSamples, 1, performance.now() + cfg.maxMs, async () => {
      const t = performance.now();
      const res = await call(
        api.volumes,
        "CreateVolume",
        {
          name: volumeName(dryRun ? "dry" : "dec"),
          sizeBytes: String(cfg.size),
          format: "VOLUME_FORMAT_QCOW2",
          dryRun,
        },
        120_000,
      );
      ms.push(performance.now() - t);
      candidates = res.placement?.candidates?.length ?? 0;
      considered = res.placement?.poolsConsidered ?? 0;
    });
    const after = await schedulerHistogram(cluster);
    return {
      ...latencyStats(ms),
      candidates_in_answer: candidates,
      pools_considered: considered,
      scheduler_histogram: histogramDelta(before, after),
      capped: r.capped,
      errors: r.errors.slice(0, 3),
    };
  };
  const dry = await timed(true);
  const real = await timed(false);
  emit("decision", {
    simulated_hosts: registered,
    simulated_pools: registered * 4,
    real_hosts: HOSTS.length,
    setup_seconds: round(setupS, 1),
    register_per_s: round(registered / setupS, 1),
    setup_capped: reg.capped,
    setup_errors: reg.errors.slice(0, 3),
    dry_run: dry,
    create: real,
    note: "times through the API (client side); creates placed on simulated hosts are never executed",
    target: "decision under 2 ms p99 at 10,000 hosts",
  });
}

// ---------------------------------------------------------------------------------------------- main

let tmp;
let cluster;
let api;
let watcher;
let pgDrop;
let cleaning;
const watcherPending = () => watcher?.pending ?? 0;

async function cleanup() {
  cleaning ??= (async () => {
    watcher?.close();
    api?.close();
    await cluster?.stop().catch((err) => progress(`stopping the cluster: ${err.message}`));
    await pgDrop?.().catch((err) => progress(`dropping the database: ${err.message}`));
    await tmp?.cleanup();
  })();
  return cleaning;
}

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(signal, () => {
    progress(`${signal}: cleaning up`);
    // The testkit's own handler kills the processes and removes the temp directory at once; this drops the
    // database (once its connections are gone) and exits.
    void cleanup().finally(() => process.exit(130));
  });
}

async function phase(name, fn) {
  progress(`phase ${name}`);
  const t0 = performance.now();
  try {
    return await fn();
  } catch (err) {
    progress(`phase ${name} failed: ${err.stack ?? err}`);
    emit(name, { error: errText(err) });
    return undefined;
  } finally {
    progress(`phase ${name} done in ${round((performance.now() - t0) / 1000, 1)} s`);
  }
}

async function main() {
  if (opts.keep) process.env.STOWAGE_TEST_KEEP_TMP = "1";
  tmp = await kit.makeTempDir("stowage-bench-");
  let databaseUrl = "";
  let database = "pglite";
  if (opts.pg) {
    database = "postgres";
    if (process.env.STOWAGE_DATABASE_URL) databaseUrl = process.env.STOWAGE_DATABASE_URL;
    else {
      const admin = "postgresql://postgres@127.0.0.1:5432/postgres";
      databaseUrl = await kit.createTestDatabase(admin, "stowage_bench");
      if (!opts.keep) pgDrop = () => kit.dropTestDatabase(admin, databaseUrl);
    }
  }
  emit("setup", {
    database,
    volumes: cfg.volumes,
    size_bytes: cfg.size,
    max_seconds: cfg.maxMs / 1000,
    inventory_interval_ms: cfg.inventoryIntervalMs,
    hosts: HOSTS.map((h) => h.name),
    cores: availableParallelism(),
    loadavg: loadavg().map((x) => round(x)),
    dir: tmp.path,
  });
  progress(`starting a cluster in ${tmp.path} (${database})`);
  cluster = await startCluster(tmp.path, databaseUrl);
  api = connect(cluster.grpcAddress);
  watcher = volumeWatcher(api);
  const counter = { total: 0, times: [] };
  const create = creator(api, watcher, counter);

  const base = await phase("baseline_qemu_img", () => baseline(tmp.path));
  if (!base) throw new Error("no baseline");
  await phase("spread", () => spreadPhase(create));
  await phase("create_latency", () => latencyPhase(create, base, counter));
  await phase("growth", () => growthPhase(cluster, create, base, counter));
  await phase("create_throughput", () => burstPhase(create, 32, cfg.burst, base, counter));
  // Creates left running by a capped phase finish (or time out) before the idle measure.
  const drainUntil = performance.now() + Math.min(cfg.createTimeoutMs, 60_000);
  while (watcher.pending > 0 && performance.now() < drainUntil) await sleep(250);
  await phase("idle", () => idlePhase(cluster, api));
  watcher.close();
  await phase("restart", () => restartPhase(cluster, api, counter));
  if (cfg.decisionHosts > 0) await phase("decision", () => decisionPhase(cluster, api));
  emit("watch", { volumes_seen_only_by_get_volume_poll: watcher.missedByWatch });
}

let code = 0;
try {
  await main();
} catch (err) {
  progress(`failed: ${err.stack ?? err}`);
  code = 1;
} finally {
  await cleanup();
}
process.exit(code);
