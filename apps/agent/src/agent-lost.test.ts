import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { agentSubjects, type Bus, connectBus, ensureAgentConsumer, ensureStreams } from "@stowage/bus";
import { RegisterAgentResponseSchema } from "@stowage/proto";
import { makeFakeSysfs, makeTempDir, type NatsServer, natsAvailable, startNats } from "@stowage/testkit";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startAgent } from "./agent.js";
import { parseAgentConfig } from "./config.js";
import { JOIN_TOKEN_ENV } from "./identity.js";
import { type SecureStandIn, startSecureStandIn } from "./testing/secure-controller.js";

/**
 * An agent whose NATS server refuses its credentials once it is running (as after `stowctl host revoke`, when
 * the server is told the host's NATS key is revoked) says so once and settles `lost`, which makes main.ts exit;
 * its heartbeats do not throw from their timer meanwhile.
 */
describe.skipIf(!natsAvailable())("agent whose NATS credentials are refused while it runs", () => {
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  let nats: NatsServer;
  let bus: Bus;
  let c: SecureStandIn;
  const auth = (pass: string) => `authorization { user: agent, password: ${pass} }`;

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-agent-lost-");
    nats = await startNats({ dir: join(tmp.path, "nats"), extraConfig: auth("first") });
    bus = await connectBus({ servers: nats.url, name: "test", user: "agent", pass: "first" });
    await ensureStreams(bus.jsm);
    c = await startSecureStandIn(tmp.path, async (req) => {
      const hostId = req.host?.name ?? "";
      return create(RegisterAgentResponseSchema, {
        hostId,
        ...agentSubjects(hostId),
        commandConsumer: await ensureAgentConsumer(bus.jsm, hostId),
        heartbeatIntervalMs: 100,
      });
    });
    c.natsJwt = false;
  });
  afterAll(async () => {
    await bus?.close();
    await c?.close();
    await nats?.stop();
    await tmp?.cleanup();
  });

  it("logs that the connection closed for good and settles lost", async () => {
    const lines: string[] = [];
    const log = pino({ level: "info" }, { write: (l: string) => void lines.push(l) });
    const sys = await makeFakeSysfs(join(tmp.path, "sys"), { nodes: 1, cpusPerNode: 2 });
    const token = `stw_join_${"cd".repeat(32)}`;
    c.tokens.set(token, "lost");
    process.env[JOIN_TOKEN_ENV] = token;
    const a = await startAgent(
      parseAgentConfig({
        hostName: "lost",
        controllerUrl: c.url,
        caFile: c.caFile,
        stateDir: join(tmp.path, "state"),
        natsUrl: nats.url,
        natsUser: "agent",
        natsPass: "first",
        natsTls: "off",
        sysfsRoot: sys.sysfsRoot,
        procRoot: sys.procRoot,
        metricsListen: "127.0.0.1:0",
        shutdownGraceMs: 200,
        pools: [{ name: "p", kind: "dir", path: join(tmp.path, "pool") }],
      }),
      { log },
    );
    let settled = false;
    void a.lost.then(() => {
      settled = true;
    });
    await bus.close();
    // The server comes back refusing the agent's credentials: its reconnects fail, and the client gives up.
    await nats.stop();
    nats = await startNats({ dir: join(tmp.path, "nats"), port: nats.port, extraConfig: auth("second") });
    const why = await a.lost;
    expect(why).toMatch(/^the NATS connection closed for good.*the agent cannot receive commands/);
    expect(lines.filter((l) => l.includes("the NATS connection closed for good"))).toHaveLength(1);
    // Heartbeats keep their timer and throw nothing on the closed connection.
    await new Promise((r) => setTimeout(r, 300));
    await a.stop();
    expect(settled).toBe(true);
  }, 60_000);
});
