/**
 * Security on a secure test fleet (issue 11, docs/security.md): the controller and nats-server in their own
 * namespace on 203.0.113.1 with TLS, three agents that joined with one-time join tokens and hold their own
 * certificates and NATS credentials. Clients the test needs besides stowctl and the agents are played by
 * test/support/fleet-probe.mjs inside the namespaces. Needs root and `ip netns`.
 */
import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { FLEET_CONTROLLER_ADDRESS, natsAvailable, netnsAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor } from "./support/cluster.js";
import {
  FLEET_GRPC_PORT,
  FLEET_METRICS_PORT,
  FLEET_NATS_PORT,
  type FleetCluster,
  startFleetCluster,
} from "./support/fleet.js";

const avail = netnsAvailable();
const skipReason = !avail.ok ? avail.reason : !natsAvailable() ? "nats-server is not installed" : undefined;
const title = skipReason ? `security on a test fleet: SKIPPED, ${skipReason}` : "security on a test fleet";
const prefix = `fs${(process.pid % 100_000).toString(36)}`;

const CTL = FLEET_CONTROLLER_ADDRESS;
const GRPC = `https://${CTL}:${FLEET_GRPC_PORT}`;
const NATS = `nats://${CTL}:${FLEET_NATS_PORT}`;

interface VolumeJson {
  id: string;
  name: string;
  state: string;
  hostId: string;
  operationId: string;
}
interface AuditJson {
  actor: string;
  role: string;
  source: string;
  action: string;
  target: string;
  outcome: string;
  requestJson?: string;
}

/** Every file under `dir` whose name ends with `.log`. */
function logFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...logFiles(p));
    else if (e.name.endsWith(".log")) out.push(p);
  }
  return out;
}

/** The base64 body of a PEM (what a leak would carry, whatever its line breaks). */
const pemBody = (pem: string) => pem.replace(/-----[^-]+-----/g, "").replace(/\s+/g, "");

describe.skipIf(skipReason !== undefined)(title, () => {
  let c: FleetCluster;
  const secrets = new Map<string, string>();
  const state = (host: string) => join(c.dir, "hosts", host, "state");
  const auditRows = async (args: string[] = []) =>
    c.stowctlJson<AuditJson[]>(["audit", "list", "--limit", "1000", ...args]);

  beforeAll(async () => {
    c = await startFleetCluster({ prefix, hosts: 3, secure: true });
    secrets.set("admin token", c.adminToken);
  }, 180_000);
  afterAll(async () => {
    await c?.stop();
  });

  it("serves TLS only: plaintext gRPC, metrics and NATS clients get nothing", async () => {
    const grpc = await c.probe("h1", { op: "plaintext-health", url: `http://${CTL}:${FLEET_GRPC_PORT}` });
    expect(grpc.ok, JSON.stringify(grpc)).toBe(false);
    const metrics = await c.probe("h1", {
      op: "http-get",
      url: `http://${CTL}:${FLEET_METRICS_PORT}/metrics`,
    });
    expect(metrics.ok, JSON.stringify(metrics)).toBe(false);
    const nats = await c.probe<{ ok: boolean; info: { tls_required?: boolean } | null; pong: boolean }>(
      "h1",
      {
        op: "raw-nats",
        host: CTL,
        port: FLEET_NATS_PORT,
      },
    );
    expect(nats.info?.tls_required).toBe(true);
    expect(nats.pong).toBe(false);
    // With the CA, the same listeners answer.
    const tls = await c.probe("h1", {
      op: "https-get",
      url: `https://${CTL}:${FLEET_METRICS_PORT}/metrics`,
      ca: c.caFile,
    });
    expect(tls.ok, JSON.stringify(tls).slice(0, 300)).toBe(true);
    // A NATS client with the CA but without credentials is refused.
    const anon = await c.probe("h1", { op: "nats-connect", natsUrl: NATS, ca: c.caFile });
    expect(anon.ok).toBe(false);
    expect(anon.error).toMatch(/auth/i);
  });

  it("refuses an agent without a certificate, a certificate of another CA, and a certificate acting as another host", async () => {
    const none = await c.probe("h1", { op: "register", url: GRPC, ca: c.caFile, host: "h1" });
    expect(none).toMatchObject({ ok: false, code: "Unauthenticated" });
    const foreign = await c.probe("h1", { op: "register-foreign", url: GRPC, ca: c.caFile, host: "h1" });
    expect(foreign.ok).toBe(false);
    // Refused at the TLS layer, before any method runs.
    expect(foreign.code).not.toMatch(/Unauthenticated|PermissionDenied/);
    const cert = { certFile: join(state("h1"), "host.crt"), keyFile: join(state("h1"), "host.key") };
    const own = await c.probe("h1", { op: "register", url: GRPC, ca: c.caFile, host: "h1", ...cert });
    expect(own, JSON.stringify(own)).toMatchObject({ ok: true, hostId: "h1" });
    const other = await c.probe("h1", { op: "register", url: GRPC, ca: c.caFile, host: "h2", ...cert });
    expect(other).toMatchObject({ ok: false, code: "PermissionDenied" });
    const hosts = await c.stowctlJson<{ id: string }[]>(["host", "list"]);
    expect(hosts.map((h) => h.id).sort()).toEqual(["h1", "h2", "h3"]);
  });

  it("takes a join token once, only before it expires, and only for its host", async () => {
    const join1 = { op: "join", url: GRPC, ca: c.caFile, host: "h1" };
    const t = await c.joinToken("h1");
    expect(await c.probe("h1", { ...join1, token: t })).toMatchObject({
      ok: true,
      subject: "CN=h1",
      natsJwt: true,
    });
    const again = await c.probe("h1", { ...join1, token: t });
    expect(again.ok).toBe(false);
    expect(again.code).toMatch(/PermissionDenied|Unauthenticated/);
    const forH1 = await c.joinToken("h1");
    const wrongHost = await c.probe("h2", { ...join1, host: "h2", token: forH1 });
    expect(wrongHost.ok).toBe(false);
    const short = await c.joinToken("h1", "1s");
    await new Promise((r) => setTimeout(r, 1500));
    const expired = await c.probe("h1", { ...join1, token: short });
    expect(expired.ok).toBe(false);
    expect(expired.error).not.toContain(short);
    const forged = await c.probe("h1", { ...join1, token: `stw_join_${"0".repeat(64)}` });
    expect(forged.ok).toBe(false);
    // The token that went to the wrong host is still unused: it works for its own host.
    expect(await c.probe("h1", { ...join1, token: forH1 })).toMatchObject({ ok: true });
  });

  it("gives viewers reads only, operators provisioning but not tokens, admins all; no token is UNAUTHENTICATED", async () => {
    const viewer = (
      await c.stowctlJson<{ secret: string }>([
        "token",
        "create",
        "--name",
        "fleet-viewer",
        "--role",
        "viewer",
      ])
    ).secret;
    const operator = (
      await c.stowctlJson<{ secret: string }>([
        "token",
        "create",
        "--name",
        "fleet-operator",
        "--role",
        "operator",
      ])
    ).secret;
    secrets.set("viewer token", viewer);
    secrets.set("operator token", operator);
    const before = await c.stowctlJson<VolumeJson[]>(["volume", "list", "--all"]);

    const denied = await c.stowctl(["volume", "create", "viewer-vol", "--size", "16M"], { token: viewer });
    expect(denied.exitCode).not.toBe(0);
    expect(denied.stderr).toMatch(/may not call CreateVolume: it needs the operator role/);
    expect(await c.stowctlJson(["volume", "list", "--all"], { token: viewer })).toEqual(before);
    const anon = await c.stowctl(["volume", "create", "anon-vol", "--size", "16M"], { token: "" });
    expect(anon.exitCode).not.toBe(0);
    expect(anon.stderr).toMatch(/a bearer token is required/);
    const anonRead = await c.stowctl(["volume", "list"], { token: "" });
    expect(anonRead.stderr).toMatch(/a bearer token is required/);
    const opToken = await c.stowctl(["token", "create", "--name", "sneaky", "--role", "admin"], {
      token: operator,
    });
    expect(opToken.stderr).toMatch(/may not call CreateToken: it needs the admin role/);
    const afterRefusals = await c.stowctlJson<VolumeJson[]>(["volume", "list", "--all"]);
    expect(afterRefusals).toEqual(before);
    const tokens = await c.stowctlJson<{ name: string }[]>(["token", "list"]);
    expect(tokens.map((t) => t.name)).not.toContain("sneaky");

    const v = (
      await c.stowctlJson<{ volume: VolumeJson }>(["volume", "create", "op-vol", "--size", "16M", "--wait"], {
        token: operator,
      })
    ).volume;
    expect(v.state).toBe("available");
    await c.stowctl(["volume", "delete", "op-vol", "--wait"], { reject: true, token: operator });

    const rows = await auditRows(["--outcome", "denied"]);
    const find = (actor: string, action: string) =>
      rows.find((r) => r.actor === actor && r.action === action);
    expect(find("fleet-viewer", "CreateVolume")).toMatchObject({ role: "viewer", outcome: "denied" });
    expect(find("fleet-viewer", "CreateVolume")?.source).toMatch(
      new RegExp(`^${CTL.replaceAll(".", "\\.")}:\\d+$`),
    );
    expect(find("fleet-operator", "CreateToken")).toMatchObject({ role: "operator", outcome: "denied" });
    expect(rows.some((r) => r.action === "CreateVolume" && r.role === "")).toBe(true);
  });

  it("confines each agent's NATS credentials to its own subjects, and drops a forged result", async () => {
    const asH2 = { natsUrl: NATS, ca: c.caFile, stateDir: state("h2"), inboxPrefix: "_INBOX_h2" };
    const own = await c.probe("h2", { op: "nats-sub", subject: "stowage.inventory.request.h2", ...asH2 });
    expect(own, JSON.stringify(own)).toMatchObject({ ok: true });
    for (const subject of ["stowage.cmd.h1", "_INBOX_h1.>", "stowage.inventory.request.h1", ">"]) {
      const r = await c.probe("h2", { op: "nats-sub", subject, ...asH2 });
      expect(r.ok, `subscribe ${subject}`).toBe(false);
      expect(r.errors?.join(" "), subject).toMatch(/permission/i);
    }
    const consumer = await c.probe("h2", {
      op: "nats-consumer",
      stream: "STOWAGE_COMMANDS",
      consumer: "agent-h1",
      ...asH2,
    });
    expect(consumer.ok).toBe(false);
    for (const subject of [
      "stowage.result.h1",
      "stowage.heartbeat.h1",
      "stowage.inventory.h1",
      "stowage.cmd.h1",
      "stowage.dead.commands.h1",
      "stowage.dead.commands",
    ]) {
      const r = await c.probe("h2", { op: "nats-pub", subject, ...asH2 });
      expect(r.ok, `publish ${subject}`).toBe(false);
      expect(r.errors?.join(" "), subject).toMatch(/permission/i);
    }

    // On its own result subject, h2 claims an operation of h1: dropped, counted, and the volume untouched.
    const v = (
      await c.stowctlJson<{ volume: VolumeJson }>([
        "volume",
        "create",
        "forge-target",
        "--size",
        "16M",
        "--pool",
        "h1/default",
        "--wait",
      ])
    ).volume;
    const forgedCount = async () => {
      const m = await c.probe<{ ok: boolean; body: string }>("ctl", {
        op: "https-get",
        url: `https://${CTL}:${FLEET_METRICS_PORT}/metrics`,
        ca: c.caFile,
      });
      const line = m.body
        .split("\n")
        .find((l) => l.startsWith('stowage_bus_forged_messages_total{kind="result"}'));
      return Number(line?.split(" ").pop() ?? 0);
    };
    const n0 = await forgedCount();
    const forged = await c.probe("h2", {
      op: "forge-result",
      subject: "stowage.result.h2",
      operationId: v.operationId,
      claimHost: "h1",
      ...asH2,
    });
    expect(forged, JSON.stringify(forged)).toMatchObject({ ok: true });
    await waitFor("the forged result to be counted", async () => (await forgedCount()) > n0, 15_000);
    const after = await c.stowctlJson<VolumeJson>(["volume", "get", v.id]);
    expect(after.state).toBe("available");
    expect(c.controller.logs()).toMatch(/forged/);
  });

  it("keeps a joined agent's certificate working across a controller restart and an agent restart", async () => {
    await c.controller.stop();
    await c.startController();
    const h1 = c.agents.find((a) => a.name === "h1")!;
    await h1.service.stop();
    // No join token this time: the certificate in the state directory is enough.
    await c.startAgent("h1", { joinToken: "" });
    await waitFor(
      "every host up after the restarts",
      async () => {
        const hosts = await c.stowctlJson<{ id: string; state: string }[]>(["host", "list"]);
        return hosts.every((h) => h.state === "up") && hosts.length === 3;
      },
      30_000,
    );
    const v = (
      await c.stowctlJson<{ volume: VolumeJson }>([
        "volume",
        "create",
        "after-restart",
        "--size",
        "16M",
        "--pool",
        "h1/default",
        "--wait",
      ])
    ).volume;
    expect(v.state).toBe("available");
  }, 120_000);

  it("refuses a revoked host's calls and closes its NATS connection within 10 s; it can join again", async () => {
    const cert = { certFile: join(state("h3"), "host.crt"), keyFile: join(state("h3"), "host.key") };
    const connz = async () => {
      const r = await c.probe<{ body: string }>("ctl", {
        op: "http-get",
        url: "http://127.0.0.1:8222/connz?limit=1024",
      });
      return (JSON.parse(r.body) as { connections?: { name?: string }[] }).connections ?? [];
    };
    expect((await connz()).some((x) => x.name === "stowage-agent-h3")).toBe(true);
    const t0 = Date.now();
    const revoked = await c.stowctlJson<{ certificatesRevoked: number; natsUsersRevoked: number }>([
      "host",
      "revoke",
      "h3",
      "--reason",
      "fleet test",
    ]);
    expect(revoked.certificatesRevoked).toBeGreaterThan(0);
    expect(revoked.natsUsersRevoked).toBeGreaterThan(0);
    await waitFor(
      "h3's gRPC calls to be refused",
      async () => {
        const r = await c.probe("h3", { op: "register", url: GRPC, ca: c.caFile, host: "h3", ...cert });
        return !r.ok && /Unauthenticated|PermissionDenied/.test(r.code ?? "");
      },
      10_000,
    );
    await waitFor(
      "h3's NATS connection to be closed",
      async () => !(await connz()).some((x) => x.name === "stowage-agent-h3"),
      10_000,
    );
    expect(Date.now() - t0).toBeLessThan(10_000);
    const nats = await c.probe("h3", {
      op: "nats-connect",
      natsUrl: NATS,
      ca: c.caFile,
      stateDir: state("h3"),
    });
    expect(nats.ok).toBe(false);
    // Revoking again changes nothing.
    const again = await c.stowctlJson<{ certificatesRevoked: number }>(["host", "revoke", "h3"]);
    expect(again.certificatesRevoked).toBe(0);

    // Back with a new join token and a new key.
    const h3 = c.agents.find((a) => a.name === "h3")!;
    await h3.service.stop();
    rmSync(state("h3"), { recursive: true, force: true });
    await c.startAgent("h3");
    await waitFor(
      "h3 up again",
      async () => {
        const hosts = await c.stowctlJson<{ id: string; state: string }[]>(["host", "list"]);
        return hosts.find((h) => h.id === "h3")?.state === "up";
      },
      30_000,
    );
  }, 120_000);

  it("lists the run's create, delete, token, join and revoke events with their actors", async () => {
    const rows = await auditRows();
    const has = (action: string, actor: string, extra: Partial<AuditJson> = {}) =>
      expect(
        rows.find(
          (r) =>
            r.action === action &&
            r.actor === actor &&
            Object.entries(extra).every(([k, v]) => r[k as keyof AuditJson] === v),
        ),
        `${action} by ${actor}`,
      ).toBeDefined();
    has("CreateVolume", "fleet-operator", { outcome: "ok", role: "operator" });
    has("DeleteVolume", "fleet-operator", { outcome: "ok" });
    has("CreateToken", "fleet-admin", { outcome: "ok", role: "admin" });
    has("RevokeHost", "fleet-admin", { target: "h3", outcome: "ok" });
    has("Join", "host:h1", { outcome: "ok" });
    const viewerOnly = await auditRows(["--actor", "fleet-viewer"]);
    expect(viewerOnly.length).toBeGreaterThan(0);
    expect(viewerOnly.every((r) => r.actor === "fleet-viewer")).toBe(true);
  });

  it("writes none of the run's secrets to a log file or an audit row", async () => {
    for (const [i, t] of c.issuedJoinTokens.entries()) secrets.set(`join token ${i}`, t);
    for (const h of ["h1", "h2", "h3"]) {
      secrets.set(`${h} key`, pemBody(readFileSync(join(state(h), "host.key"), "utf8")));
      secrets.set(`${h} NATS seed`, readFileSync(join(state(h), "nats-user.nk"), "utf8").trim());
      secrets.set(`${h} NATS JWT`, readFileSync(join(state(h), "nats-user.jwt"), "utf8").trim());
    }
    const pki = join(c.controllerDir, "pki");
    secrets.set("CA key", pemBody(readFileSync(join(pki, "ca.key"), "utf8")));
    for (const f of readdirSync(pki).filter((n) => n.endsWith(".nk")))
      secrets.set(`controller ${f}`, readFileSync(join(pki, f), "utf8").trim());
    for (const [name, value] of secrets) expect(value.length, name).toBeGreaterThan(20);

    const logs = logFiles(c.dir);
    expect(logs.length).toBeGreaterThanOrEqual(5); // nats, controller, three agents
    const audit = JSON.stringify(await auditRows(["--limit", "10000"]));
    expect(audit.length).toBeGreaterThan(1000);
    const texts: [string, string][] = [
      ["audit rows", audit],
      ...logs.map((f) => [f, readFileSync(f, "utf8")] as [string, string]),
    ];
    let bytes = 0;
    for (const [where, text] of texts) {
      bytes += text.length;
      for (const [name, value] of secrets) expect(text.includes(value), `${name} in ${where}`).toBe(false);
    }
    expect(bytes).toBeGreaterThan(statSync(logs[0]!).size);
  });
});
