import { Writable } from "node:stream";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { TokenKind, TokenRole, TokenService, VolumeService } from "@stowage/proto";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createAuthInterceptor, parseTokens, peerKey, storedTokens } from "./auth.js";
import type { ControllerContext } from "./context.js";
import { tokenRoutes } from "./routes/tokens.js";
import { volumeRoutes } from "./routes/volumes.js";
import { countRows, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";

const text = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? String(x) : x));

describe("API tokens stored hashed", () => {
  let f: ServiceFixture;
  let logLines: string[];
  let clock: number;
  const client = (token?: string) => {
    const transport = createRouterTransport(
      (router) => {
        router.service(TokenService, tokenRoutes(f.ctx));
        router.service(VolumeService, volumeRoutes(f.ctx));
      },
      {
        router: {
          interceptors: [
            createAuthInterceptor(
              parseTokens("root:admin:env-admin-token"),
              storedTokens(f.ctx),
              () => clock,
            ),
          ],
        },
        transport: {
          interceptors: token
            ? [
                (next) => (req) => {
                  req.header.set("authorization", `Bearer ${token}`);
                  return next(req);
                },
              ]
            : [],
        },
      },
    );
    return { tokens: createClient(TokenService, transport), volumes: createClient(VolumeService, transport) };
  };

  beforeEach(async () => {
    f = await openServiceFixture();
    logLines = [];
    clock = 1_000_000;
    const sink = new Writable({
      write(chunk, _enc, cb) {
        logLines.push(String(chunk));
        cb();
      },
    });
    (f.ctx as { log: ControllerContext["log"] }).log = pino({ level: "debug" }, sink) as never;
  });
  afterEach(async () => f.close());

  it("creates a token whose secret works once shown, lists it without secrets, and audits without the secret", async () => {
    const admin = client("env-admin-token");
    const res = await admin.tokens.createToken({
      name: "ci",
      role: TokenRole.OPERATOR,
      ttl: { seconds: 86_400n, nanos: 0 },
    });
    expect(res.secret).toMatch(/^stw_[0-9a-f]{64}$/);
    expect(res.token).toMatchObject({ name: "ci", role: TokenRole.OPERATOR, createdBy: "root" });
    expect(res.token!.expiresAt).toBeDefined();

    // The secret is nowhere but in that answer: not in the table, the audit row or a log line.
    const [stored] = await f.sql<{ h: string }[]>`select encode(secret_sha256, 'hex') as h from api_tokens`;
    expect(stored!.h).toHaveLength(64);
    expect(text(await f.sql`select * from api_tokens`)).not.toContain(res.secret.slice(4));
    const audit = await f.sql`select * from audit_log`;
    expect(audit.map((a) => [a.actor, a.action, a.target])).toEqual([["root", "CreateToken", res.token!.id]]);
    expect(text(audit)).not.toContain(res.secret.slice(4));
    expect(logLines.join("")).toContain("api token created");
    expect(logLines.join("")).not.toContain(res.secret.slice(4));

    const list = await admin.tokens.listTokens({});
    expect(list.tokens.map((t) => t.name)).toEqual(["ci"]);
    expect(text(list)).not.toContain(res.secret.slice(4));

    // The new token authenticates as an operator: reads work, token management does not.
    const ci = client(res.secret);
    await expect(ci.volumes.listVolumes({})).resolves.toBeDefined();
    await expect(ci.tokens.listTokens({})).rejects.toMatchObject({ code: Code.PermissionDenied });
    const [used] = await f.sql<{ lastUsedAt: Date | null }[]>`select last_used_at from api_tokens`;
    expect(used!.lastUsedAt).not.toBeNull();
    await expect(client("stw_nope").volumes.listVolumes({})).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
  });

  it("a revoke takes effect once the cache expires, and is audited", async () => {
    const admin = client("env-admin-token");
    const { secret, token } = await admin.tokens.createToken({ name: "temp", role: TokenRole.VIEWER });
    const temp = client(secret);
    await temp.volumes.listVolumes({});
    const revoked = await admin.tokens.revokeToken({ token: "temp" });
    expect(revoked.token!.revokedAt).toBeDefined();
    // Cached for up to 5 s...
    await expect(temp.volumes.listVolumes({})).resolves.toBeDefined();
    clock += 5_000;
    await expect(temp.volumes.listVolumes({})).rejects.toMatchObject({ code: Code.Unauthenticated });
    const audit = await f.sql`select actor, action, target from audit_log order by id`;
    expect(audit.map((a) => a.action)).toEqual(["CreateToken", "RevokeToken"]);
    expect(audit[1]!.target).toBe(token!.id);
    expect(text(audit)).not.toContain(secret.slice(4));
    expect((await admin.tokens.listTokens({})).tokens).toEqual([]);
    expect((await admin.tokens.listTokens({ includeInactive: true })).tokens).toHaveLength(1);
    // The name can be used again.
    await admin.tokens.createToken({ name: "temp", role: TokenRole.VIEWER });
  });

  it("refuses bad input at the edge, before anything is written", async () => {
    const admin = client("env-admin-token");
    const bad = [
      { name: "", role: TokenRole.VIEWER },
      { name: "Bad Name", role: TokenRole.VIEWER },
      { name: "x".repeat(64), role: TokenRole.VIEWER },
      { name: "ok", role: TokenRole.UNSPECIFIED },
      { name: "ok", role: 42 as TokenRole },
      { name: "ok", role: TokenRole.VIEWER, ttl: { seconds: -1n, nanos: 0 } },
      { name: "ok", role: TokenRole.VIEWER, ttl: { seconds: 10n ** 12n, nanos: 0 } },
    ];
    for (const req of bad)
      await expect(admin.tokens.createToken(req)).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(admin.tokens.revokeToken({ token: "../x" })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    await expect(admin.tokens.revokeToken({ token: "absent" })).rejects.toMatchObject({
      code: Code.NotFound,
    });
    // A secret pasted where a name belongs is refused without being echoed back.
    const pasted = `stw_${"ab".repeat(32)}`;
    const err = await admin.tokens.revokeToken({ token: pasted }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: Code.InvalidArgument });
    expect(String((err as Error).message)).not.toContain(pasted.slice(4, 20));
    await admin.tokens.createToken({ name: "dup", role: TokenRole.ADMIN });
    await expect(admin.tokens.createToken({ name: "dup", role: TokenRole.ADMIN })).rejects.toMatchObject({
      code: Code.AlreadyExists,
    });
    const [n] = await f.sql<{ n: number }[]>`select count(*)::int as n from api_tokens`;
    expect(n!.n).toBe(1);
    expect(await countRows(f.sql, "audit_log")).toBe(1);
  });

  it("needs the admin role for every token method; a stored admin token can manage tokens", async () => {
    await expect(client().tokens.listTokens({})).rejects.toBeInstanceOf(ConnectError);
    const admin = client("env-admin-token");
    const { secret } = await admin.tokens.createToken({ name: "boss", role: TokenRole.ADMIN });
    await expect(client(secret).tokens.listTokens({})).resolves.toBeDefined();
  });

  it("makes one-time join tokens for a host: always expiring (1 h by default, at most 24 h), never a bearer", async () => {
    const admin = client("env-admin-token");
    const res = await admin.tokens.createToken({ name: "", role: TokenRole.UNSPECIFIED, host: "node1.lab" });
    expect(res.secret).toMatch(/^stw_join_[0-9a-f]{64}$/);
    expect(res.token).toMatchObject({ kind: TokenKind.JOIN, host: "node1.lab", role: TokenRole.UNSPECIFIED });
    expect(res.token!.name).toMatch(/^join-node1-lab-[0-9a-f]{6}$/);
    const ttl = Number(res.token!.expiresAt!.seconds) - Number(res.token!.createdAt!.seconds);
    expect(ttl).toBeGreaterThanOrEqual(3599);
    expect(ttl).toBeLessThanOrEqual(3601);
    const named = await admin.tokens.createToken({
      name: "join-n2",
      role: TokenRole.ADMIN,
      host: "node2",
      ttl: { seconds: 600n, nanos: 0 },
    });
    expect(named.token).toMatchObject({ name: "join-n2", host: "node2", kind: TokenKind.JOIN });
    await expect(
      admin.tokens.createToken({ name: "", role: 0, host: "node3", ttl: { seconds: 25n * 3600n, nanos: 0 } }),
    ).rejects.toMatchObject({ code: Code.InvalidArgument, rawMessage: "a join token lives at most 24 h" });
    await expect(admin.tokens.createToken({ name: "", role: 0, host: "Bad Host" })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    // A join token's secret is not a bearer token, even for reads.
    await expect(client(res.secret).volumes.listVolumes({})).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    const list = await admin.tokens.listTokens({});
    expect(list.tokens.map((t) => [t.kind, t.host]).sort()).toEqual([
      [TokenKind.JOIN, "node1.lab"],
      [TokenKind.JOIN, "node2"],
    ]);
    expect(text(list)).not.toContain(res.secret.slice(9));
    const audit = await f.sql`select action, request from audit_log order by id`;
    expect(audit[0]).toMatchObject({ action: "CreateToken", request: { kind: "join", host: "node1.lab" } });
    expect(text(audit)).not.toContain(res.secret.slice(9));
    expect(logLines.join("")).toContain("join token created");
    expect(logLines.join("")).not.toContain(res.secret.slice(9));
  });

  it("on a TLS listener authentication is on even without any token, and a peer certificate is not a user", async () => {
    const transport = (tls: boolean, peer?: { host: string; serial: string }) =>
      createRouterTransport((router) => router.service(VolumeService, volumeRoutes(f.ctx)), {
        router: {
          interceptors: [
            (next) => (req) => {
              if (peer) req.contextValues.set(peerKey, { address: "10.0.0.9:1", ...peer });
              return next(req);
            },
            createAuthInterceptor(new Map(), storedTokens(f.ctx), () => clock, {
              tls,
              certificates: async () => true,
            }),
          ],
        },
      });
    // No token anywhere: a loopback cluster without TLS lets everyone in as admin...
    await expect(createClient(VolumeService, transport(false)).listVolumes({})).resolves.toBeDefined();
    // ...a TLS one lets no one in without a token.
    await expect(createClient(VolumeService, transport(true)).listVolumes({})).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    // An agent's certificate may call only AgentService.
    await expect(
      createClient(VolumeService, transport(true, { host: "node1", serial: "4a" })).listVolumes({}),
    ).rejects.toMatchObject({ code: Code.PermissionDenied });
  });
});
