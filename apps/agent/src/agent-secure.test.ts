import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { create, fromBinary } from "@bufbuild/protobuf";
import { agentSubjects, ensureAgentConsumer, inventorySubject } from "@stowage/bus";
import { type Inventory, InventorySchema, RegisterAgentResponseSchema } from "@stowage/proto";
import { makeFakeSysfs, natsAvailable } from "@stowage/testkit";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AgentHandle, startAgent } from "./agent.js";
import { parseAgentConfig } from "./config.js";
import { IDENTITY_FILES, JOIN_TOKEN_ENV } from "./identity.js";
import { type BusFixture, createCommand, openBusFixture, waitUntil } from "./testing/fixture.js";
import { type SecureStandIn, startSecureStandIn } from "./testing/secure-controller.js";

/**
 * A real agent in secure mode (an https controllerUrl) against the TLS stand-in for the AgentService and a real
 * nats-server: it joins with the token in STOWAGE_JOIN_TOKEN, registers over mutual TLS, runs its commands, and
 * says clearly when the controller refuses its certificate.
 */
describe.skipIf(!natsAvailable())("agent in secure mode (TLS stand-in controller, real nats-server)", () => {
  let f: BusFixture;
  let c: SecureStandIn;
  const lines: string[] = [];
  const log = pino({ level: "debug" }, { write: (line: string) => void lines.push(line) });
  const secrets = new Set<string>();
  const running: AgentHandle[] = [];

  beforeAll(async () => {
    f = await openBusFixture();
    sys = await makeFakeSysfs(`${f.tmp}/edge-sys`, { nodes: 1, cpusPerNode: 2 });
    c = await startSecureStandIn(f.tmp, async (req) => {
      const hostId = req.host?.name ?? "";
      return create(RegisterAgentResponseSchema, {
        hostId,
        ...agentSubjects(hostId),
        commandConsumer: await ensureAgentConsumer(f.bus.jsm, hostId),
        heartbeatIntervalMs: 200,
      });
    });
  });
  afterAll(async () => {
    for (const a of running) await a.stop();
    await c?.close();
    await f?.close();
  });

  const token = (host: string) => {
    const secret = `stw_join_${"ab".repeat(28)}${String(secrets.size).padStart(8, "0")}`;
    c.tokens.set(secret, host);
    secrets.add(secret);
    return secret;
  };
  const stateDir = () => join(f.tmp, "edge-state");
  let sys: Awaited<ReturnType<typeof makeFakeSysfs>>;
  const start = async () => {
    const config = parseAgentConfig({
      hostName: "edge",
      controllerUrl: c.url,
      caFile: c.caFile,
      stateDir: stateDir(),
      natsUrl: f.nats.url,
      natsTls: "off",
      sysfsRoot: sys.sysfsRoot,
      procRoot: sys.procRoot,
      metricsListen: "127.0.0.1:0",
      inventoryIntervalMs: 600_000,
      shutdownGraceMs: 500,
      pools: [{ name: "p", kind: "dir", path: `${f.tmp}/edge-pool` }],
    });
    const a = await startAgent(config, { log });
    running.push(a);
    return a;
  };
  const stop = async (a: AgentHandle) => {
    await a.stop();
    running.splice(running.indexOf(a), 1);
  };
  const noteFiles = async () => {
    for (const name of [IDENTITY_FILES.key, IDENTITY_FILES.natsSeed, IDENTITY_FILES.natsJwt])
      secrets.add((await readFile(join(stateDir(), name), "utf8")).trim());
  };

  it("joins with STOWAGE_JOIN_TOKEN, registers over mutual TLS and runs its commands", async () => {
    process.env[JOIN_TOKEN_ENV] = token("edge");
    const a = await start();
    await noteFiles();
    // The tools the agent runs never see the token.
    expect(process.env[JOIN_TOKEN_ENV]).toBeUndefined();
    expect(c.joins.map((j) => j.hostName)).toEqual(["edge"]);
    expect(c.registrations[0]).toEqual({ host: "edge", serial: c.issued[0] });

    const invs: Inventory[] = [];
    f.bus.nc.subscribe(inventorySubject("edge"), {
      callback: (_e, m) => void invs.push(fromBinary(InventorySchema, m.data)),
    });
    const cmd = createCommand(a.hostId, "p");
    await f.publish(cmd);
    const volumeId = (cmd.payload.value as { volumeId: string }).volumeId;
    await waitUntil("the created volume in a delta", () =>
      invs.some((i) => i.delta && i.volumes.some((v) => v.volumeId === volumeId)),
    );
    await stop(a);
  });

  it("starts again with its certificate, without a token", async () => {
    const a = await start();
    expect(c.joins).toHaveLength(1);
    expect(c.registrations.at(-1)).toEqual({ host: "edge", serial: c.issued[0] });
    await stop(a);
  });

  it("says on every retry that it was refused and must join again; joins again when given a token", async () => {
    const revoked = c.issued[0] as string;
    c.revoked.add(revoked);
    const refusals = () => lines.filter((l) => l.includes("refused this host's certificate")).length;
    const starting = start();
    await waitUntil("two refusals logged", () => refusals() >= 2);
    expect(lines.find((l) => l.includes("refused this host's certificate"))).toContain(
      "must join again: create a token with `stowctl token create --host edge`",
    );
    // Let it in again (the refusal was the stand-in's) so that it can be stopped.
    c.revoked.delete(revoked);
    await stop(await starting);

    c.revoked.add(revoked);
    process.env[JOIN_TOKEN_ENV] = token("edge");
    const a = await start();
    await noteFiles();
    expect(c.joins).toHaveLength(2);
    expect(c.issued).toHaveLength(2);
    expect(c.registrations.at(-1)).toEqual({ host: "edge", serial: c.issued[1] });
    await stop(a);
  });

  it("logged none of its secrets (the tokens, its keys, its NATS seed and JWT)", () => {
    const all = lines.join("");
    expect(secrets.size).toBeGreaterThanOrEqual(8);
    for (const s of secrets) expect(all.includes(s), `a secret in the log: ${s.slice(0, 12)}...`).toBe(false);
    expect(all).not.toMatch(/PRIVATE KEY|stw_join_/);
  });
});
