/**
 * A private nats-server with JetStream for one test file: its own ports on 127.0.0.1 and its own store
 * directory, so test files run in parallel. Facts: nats-server 2.9.10 (Debian 12) starts in about 0.4 s and
 * is ready when /healthz?js-enabled-only=true answers ok; it exits at once on SIGTERM. JetStream would
 * otherwise reserve 75% of RAM for memory streams, so a config file bounds memory and file storage.
 */
import { accessSync, constants } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { freePorts, waitForPortFree } from "./ports.js";
import { type Service, ServiceStartError, spawnService } from "./process.js";
import { makeTempDir } from "./temp.js";

export interface StartNatsOptions {
  /** Where the store (DIR/js), config and log live. Default: a new temp dir, removed by stop(). A given dir is kept. */
  dir?: string;
  /** Client port (default: a free one). */
  port?: number;
  /** HTTP monitoring port (default: a free one). */
  monitorPort?: number;
  /** JetStream max_memory_store in bytes. Default 256 MiB. */
  maxMemoryStore?: number;
  /** JetStream max_file_store in bytes. Default 1 GiB. */
  maxFileStore?: number;
  /** Extra lines appended to the generated config file (nats-server config syntax). */
  extraConfig?: string;
  /** Default 20 s. */
  startTimeoutMs?: number;
}

export interface NatsServer {
  /** nats://127.0.0.1:PORT */
  readonly url: string;
  readonly port: number;
  readonly monitorPort: number;
  /** http://127.0.0.1:MONITOR_PORT */
  readonly monitorUrl: string;
  readonly dir: string;
  /** JetStream store directory (DIR/js). */
  readonly storeDir: string;
  /** DIR/nats.log: all server output, across restarts. */
  readonly logFile: string;
  /** The current server process id (changes on restart). */
  readonly pid: number;
  /** SIGTERM, wait for the exit; removes the dir if the testkit created it. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL (a crash) without removing anything; `start()` brings it back with the same data and ports. */
  kill(): Promise<void>;
  /** Starts the server again after `kill()` (or `restart()`), same dir and ports. */
  start(): Promise<void>;
  /** Graceful stop then start, same dir and ports: streams on disk survive. */
  restart(): Promise<void>;
  /** Server output so far (this process only). */
  logs(): string;
}

const NATS_CANDIDATES = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"];

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Path of nats-server: $STOWAGE_NATS_SERVER, then $PATH, then the usual places (Debian puts it in /usr/sbin). */
export function natsServerPath(): string | undefined {
  const explicit = process.env.STOWAGE_NATS_SERVER;
  if (explicit) return isExecutable(explicit) ? explicit : undefined;
  const fromPath = (process.env.PATH ?? "").split(delimiter).filter(Boolean);
  for (const p of [...fromPath.map((d) => join(d, "nats-server")), ...NATS_CANDIDATES]) {
    if (isExecutable(p)) return p;
  }
  return undefined;
}

/**
 * Whether NATS suites should run: true when nats-server is installed, and also when
 * STOWAGE_TEST_NATS_AUTOSTART=1 (set by scripts/test.sh and CI) so that a missing server makes
 * `startNats()` fail loudly instead of the suite being skipped. Use: `describe.skipIf(!natsAvailable())`.
 */
export function natsAvailable(): boolean {
  return process.env.STOWAGE_TEST_NATS_AUTOSTART === "1" || natsServerPath() !== undefined;
}

function natsConfig(storeDir: string, opts: StartNatsOptions): string {
  return [
    "# written by @stowage/testkit",
    "jetstream {",
    `  store_dir: ${JSON.stringify(storeDir)}`,
    `  max_memory_store: ${opts.maxMemoryStore ?? 256 * 1024 * 1024}`,
    `  max_file_store: ${opts.maxFileStore ?? 1024 * 1024 * 1024}`,
    "}",
    opts.extraConfig ?? "",
    "",
  ].join("\n");
}

const PORT_IN_USE = /address already in use/i;

/** Starts a private nats-server with JetStream on 127.0.0.1 and waits until JetStream is up. */
export async function startNats(opts: StartNatsOptions = {}): Promise<NatsServer> {
  const bin = natsServerPath();
  if (!bin) {
    throw new Error(
      "nats-server not found (looked in $STOWAGE_NATS_SERVER, $PATH, /usr/sbin): install it with " +
        "`apt-get install -y nats-server` (or run scripts/install-deps.sh)",
    );
  }
  const temp = opts.dir ? undefined : await makeTempDir("stowage-nats-");
  const dir = opts.dir ?? temp!.path;
  const storeDir = join(dir, "js");
  const logFile = join(dir, "nats.log");
  const configFile = join(dir, "nats.conf");
  await mkdir(storeDir, { recursive: true });
  await writeFile(configFile, natsConfig(storeDir, opts));

  let port = opts.port ?? 0;
  let monitorPort = opts.monitorPort ?? 0;
  const timeout = opts.startTimeoutMs ?? 20_000;

  const launch = (): Promise<Service> =>
    spawnService({
      name: `nats-server :${port}`,
      command: bin,
      args: ["-c", configFile, "-a", "127.0.0.1", "-p", String(port), "-m", String(monitorPort)],
      readyWhen: `http://127.0.0.1:${monitorPort}/healthz?js-enabled-only=true`,
      readyTimeoutMs: timeout,
      logFile,
      stopTimeoutMs: 10_000,
    });

  let service: Service | undefined;
  // a free port can be taken by a parallel test between freePorts() and the bind: pick new ones and retry
  for (let attempt = 1; ; attempt++) {
    if (!opts.port || !opts.monitorPort) {
      const [a, b] = await freePorts(2);
      if (!opts.port) port = a!;
      if (!opts.monitorPort) monitorPort = b!;
    }
    try {
      service = await launch();
      break;
    } catch (err) {
      const retry =
        err instanceof ServiceStartError &&
        PORT_IN_USE.test(err.logs) &&
        attempt < 4 &&
        (!opts.port || !opts.monitorPort);
      if (!retry) {
        await temp?.cleanup();
        throw err;
      }
    }
  }

  let current: Service | undefined = service;
  let last: Service = service;
  let stopped = false;
  const halt = async (how: "stop" | "kill") => {
    const s = current;
    current = undefined;
    if (!s) return;
    if (how === "stop") await s.stop("SIGTERM");
    else await s.kill();
    await waitForPortFree(port).catch(() => {});
  };
  const start = async () => {
    if (stopped) throw new Error("startNats: this server was stopped for good; start a new one");
    if (current?.running) return;
    current = await launch();
    last = current;
  };

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    monitorPort,
    monitorUrl: `http://127.0.0.1:${monitorPort}`,
    dir,
    storeDir,
    logFile,
    get pid() {
      return current?.pid ?? -1;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await halt("stop");
      await temp?.cleanup();
    },
    kill: () => halt("kill"),
    start,
    async restart() {
      await halt("stop");
      await start();
    },
    logs: () => last.logs(),
  };
}
