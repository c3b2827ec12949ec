// The local cluster behind `npm run up`. Everything lives under one data directory (.stowage/ by default):
//   nats/        JetStream store of a private nats-server on 127.0.0.1:7422
//   controller/  the embedded PGlite database
//   hosts/NAME/  each agent's config, fake sysfs (its own NUMA layout) and log
//   pools/NAME/  each agent's dir pool
import { spawn } from "node:child_process";
import { createWriteStream, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { makeFakeSysfs } from "@stowage/testkit";
import { AGENT_ENV, AGENT_NODE_ARGS } from "./agent-runtime.mjs";

const root = resolve(import.meta.dirname, "..");
const dataDir = resolve(process.env.STOWAGE_LOCAL_DIR ?? join(root, ".stowage"));
const NATS_PORT = 7422;
const NATS_MONITOR = 7423;
const GRPC = "127.0.0.1:7480";
const METRICS = "127.0.0.1:7481";
const server = `http://${GRPC}`;

/** Three hosts, each with its own NUMA layout; the pool sits on one of the host's nodes. */
const HOSTS = [
  { name: "node1", zone: "zone-a", nodes: 2, cpusPerNode: 2, poolNode: 0 },
  { name: "node2", zone: "zone-a", nodes: 2, cpusPerNode: 4, poolNode: 1 },
  { name: "node3", zone: "zone-b", nodes: 4, cpusPerNode: 2, poolNode: 2 },
];

const DEMO = [
  ["demo-web-root", "--size", "2G", "--format", "qcow2"],
  [
    "demo-db-data",
    "--size",
    "4G",
    "--format",
    "raw",
    "--numa-host",
    "node2",
    "--numa-node",
    "1",
    "--anti-affinity",
    "demo-db",
  ],
  ["demo-db-log", "--size", "1G", "--format", "qcow2", "--anti-affinity", "demo-db", "--lazy-refcounts"],
  ["demo-scratch", "--size", "512M", "--format", "qcow2", "--pool", "node3/default"],
];

const children = [];
let stopping = false;

function log(msg) {
  process.stdout.write(`${msg}\n`);
}

function start(name, command, args, env = {}) {
  const out = createWriteStream(join(dataDir, `${name}.log`), { flags: "a" });
  // Own process group: a Ctrl-C in the terminal reaches only this script, which stops the children in order.
  const child = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  child.on("exit", (code, signal) => {
    if (!stopping) {
      log(`!! ${name} exited (${signal ?? code}); see ${join(dataDir, `${name}.log`)}`);
      void shutdown(1);
    }
  });
  children.push({ name, child });
  return child;
}

async function waitUntil(what, check, timeoutMs = 60_000) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const httpOk = (url) => fetch(url).then((r) => r.ok);

function stowctl(args, { quiet = false, progressOnly = false } = {}) {
  return new Promise((resolveRun) => {
    const child = spawn(
      process.execPath,
      [join(root, "apps/cli/bin/stowctl.js"), "--server", server, ...args],
      {
        stdio: quiet ? "ignore" : progressOnly ? ["ignore", "ignore", "inherit"] : "inherit",
      },
    );
    child.on("exit", (code) => resolveRun(code ?? 1));
  });
}

async function shutdown(code = 0) {
  if (stopping) return;
  stopping = true;
  log("\n==> stopping the local cluster");
  // Agents first, then the controller, then NATS: nothing is in flight when the bus goes away.
  for (const group of [
    children.filter((c) => c.name.startsWith("agent")),
    children.filter((c) => c.name === "controller"),
    children.filter((c) => c.name === "nats"),
  ]) {
    await Promise.all(
      group.map(
        ({ child }) =>
          new Promise((r) => {
            if (child.exitCode !== null || child.signalCode !== null) return r();
            child.once("exit", r);
            child.kill("SIGTERM");
            setTimeout(() => child.kill("SIGKILL"), 10_000).unref();
          }),
      ),
    );
  }
  log(`stopped. Data kept in ${dataDir}: \`npm run up\` brings the cluster back with its volumes.`);
  process.exit(code);
}

process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));

async function main() {
  mkdirSync(dataDir, { recursive: true });
  log(`==> local cluster in ${dataDir}`);
  if (await httpOk(`http://${METRICS}/healthz`).catch(() => false)) {
    throw new Error(`something already answers on ${METRICS}: is another local cluster running?`);
  }

  start("nats", "nats-server", [
    "-a",
    "127.0.0.1",
    "-p",
    String(NATS_PORT),
    "-m",
    String(NATS_MONITOR),
    "-js",
    "-sd",
    join(dataDir, "nats"),
  ]);
  await waitUntil("nats-server", () =>
    httpOk(`http://127.0.0.1:${NATS_MONITOR}/healthz?js-enabled-only=true`),
  );
  log(`    nats-server with JetStream on 127.0.0.1:${NATS_PORT}`);

  start("controller", process.execPath, [join(root, "apps/controller/dist/main.js")], {
    STOWAGE_GRPC_LISTEN: GRPC,
    STOWAGE_METRICS_LISTEN: METRICS,
    STOWAGE_DATA_DIR: join(dataDir, "controller"),
    // A user's PostgreSQL when STOWAGE_DATABASE_URL is set; otherwise embedded PGlite in the data directory.
    STOWAGE_DATABASE_URL: process.env.STOWAGE_DATABASE_URL ?? "",
    STOWAGE_NATS_URL: `nats://127.0.0.1:${NATS_PORT}`,
  });
  await waitUntil("the controller", () => httpOk(`http://${METRICS}/readyz`), 120_000);
  const database = process.env.STOWAGE_DATABASE_URL
    ? "PostgreSQL from STOWAGE_DATABASE_URL"
    : "embedded PGlite";
  log(`    controller on ${GRPC} (${database}), metrics on http://${METRICS}/metrics`);

  for (const [i, h] of HOSTS.entries()) {
    const base = join(dataDir, "hosts", h.name);
    const sysroot = join(base, "sysroot");
    if (!existsSync(join(sysroot, "sys")))
      await makeFakeSysfs(sysroot, { nodes: h.nodes, cpusPerNode: h.cpusPerNode });
    const config = join(base, "agent.json");
    writeFileSync(
      config,
      `${JSON.stringify(
        {
          hostName: h.name,
          zone: h.zone,
          controllerUrl: server,
          natsUrl: `nats://127.0.0.1:${NATS_PORT}`,
          sysfsRoot: join(sysroot, "sys"),
          procRoot: join(sysroot, "proc"),
          metricsListen: `127.0.0.1:${7482 + i}`,
          pools: [
            {
              name: "default",
              kind: "dir",
              path: join(dataDir, "pools", h.name, "default"),
              numaNode: h.poolNode,
              labels: { tier: "local" },
            },
          ],
        },
        null,
        2,
      )}\n`,
    );
    start(
      `agent-${h.name}`,
      process.execPath,
      [...AGENT_NODE_ARGS, join(root, "apps/agent/dist/main.js"), "--config", config],
      AGENT_ENV,
    );
  }
  await waitUntil(
    "three agents",
    async () =>
      (await stowctl(["host", "get", "node3"], { quiet: true })) === 0 &&
      (await stowctl(["host", "get", "node1"], { quiet: true })) === 0 &&
      (await stowctl(["host", "get", "node2"], { quiet: true })) === 0,
  );
  log("    agents node1, node2, node3 registered\n");

  log("==> provisioning demo volumes (idempotent: existing ones are kept)");
  for (const args of DEMO) {
    const code = await stowctl(["volume", "create", ...args, "--wait"], { progressOnly: true });
    if (code !== 0) log(`!! stowctl volume create ${args.join(" ")} exited ${code}`);
  }
  log("");
  await stowctl(["volume", "list"]);
  log(`
==> the cluster is up. From another terminal in this repository:
    npx stowctl host list
    npx stowctl pool list
    npx stowctl volume create my-disk --size 10G --wait
    npx stowctl placement explain --size 20G --numa-host node2 --numa-node 1
    npx stowctl volume list -o json
    npx stowctl volume delete my-disk --wait
    curl -s http://${METRICS}/metrics | grep ^stowage_
Logs: ${dataDir}/*.log. Press Ctrl-C to stop.`);
}

main().catch((err) => {
  log(`!! ${err.message}`);
  void shutdown(1);
});
