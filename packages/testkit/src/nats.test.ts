import { existsSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type NatsServer, natsAvailable, startNats } from "./nats.js";
import { freePort, isPortFree } from "./ports.js";

/** Speaks the NATS text protocol: CONNECT, then `send`, and resolves with the reply text once `until` matches. */
function natsExchange(port: number, send: string, until: RegExp, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ port, host: "127.0.0.1" });
    let got = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no ${until} from nats within ${timeoutMs} ms; got: ${got}`));
    }, timeoutMs);
    socket.once("data", () => socket.write(`CONNECT {"verbose":false,"pedantic":false}\r\n${send}`));
    socket.on("data", (chunk) => {
      got += chunk.toString();
      if (until.test(got)) {
        clearTimeout(timer);
        socket.end();
        resolve(got);
      }
    });
    socket.once("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function jsApi(port: number, subject: string, body: object): Promise<string> {
  const payload = JSON.stringify(body);
  return natsExchange(
    port,
    `SUB _INBOX.t 1\r\nPUB ${subject} _INBOX.t ${Buffer.byteLength(payload)}\r\n${payload}\r\n`,
    /MSG _INBOX\.t 1 \d+\r\n.*\r\n/s,
  );
}

async function jsz(
  server: NatsServer,
): Promise<{ config: { max_memory: number; store_dir: string }; streams: number }> {
  const res = await fetch(`${server.monitorUrl}/jsz`);
  return (await res.json()) as { config: { max_memory: number; store_dir: string }; streams: number };
}

describe.skipIf(!natsAvailable())("startNats", () => {
  let nats: NatsServer;

  beforeAll(async () => {
    nats = await startNats();
  });
  afterAll(async () => {
    await nats?.stop();
  });

  it("answers PING with PONG on its client port", async () => {
    expect(nats.url).toBe(`nats://127.0.0.1:${nats.port}`);
    expect(await natsExchange(nats.port, "PING\r\n", /PONG\r\n/)).toContain("PONG");
  });

  it("runs JetStream with bounded memory in its own store dir", async () => {
    const health = await fetch(`${nats.monitorUrl}/healthz?js-enabled-only=true`);
    expect(await health.json()).toEqual({ status: "ok" });
    const info = await jsz(nats);
    expect(info.config.max_memory).toBe(256 * 1024 * 1024);
    expect(info.config.store_dir.startsWith(nats.storeDir)).toBe(true);
  });

  it("keeps streams and ports across a restart, and comes back after a kill", async () => {
    const created = await jsApi(nats.port, "$JS.API.STREAM.CREATE.KEEP", {
      name: "KEEP",
      subjects: ["keep.>"],
      storage: "file",
    });
    expect(created).toContain('"type":"io.nats.jetstream.api.v1.stream_create_response"');
    const pid = nats.pid;
    await nats.restart();
    expect(nats.pid).not.toBe(pid);
    expect((await jsz(nats)).streams).toBe(1);

    await nats.kill();
    expect(await isPortFree(nats.port)).toBe(true);
    await nats.start();
    expect((await jsz(nats)).streams).toBe(1);
    expect(await natsExchange(nats.port, "PING\r\n", /PONG\r\n/)).toContain("PONG");
  });

  it("stops on SIGTERM, frees its ports and removes its dir", async () => {
    const other = await startNats();
    await other.stop();
    expect(await isPortFree(other.port)).toBe(true);
    expect(await isPortFree(other.monitorPort)).toBe(true);
    expect(existsSync(other.dir)).toBe(false);
    await other.stop(); // idempotent
  });

  it("fails with the server's last log lines when its port is taken", async () => {
    const blocker = createServer();
    const port = await freePort();
    await new Promise<void>((resolve) => blocker.listen(port, "127.0.0.1", resolve));
    try {
      await expect(startNats({ port })).rejects.toThrow(/address already in use/);
    } finally {
      blocker.close();
    }
  });
});
