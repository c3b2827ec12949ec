import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  createRouterTransport,
  type Interceptor,
} from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  AgentService,
  AuditService,
  TokenRole,
  TokenService,
  VolumeFormat,
  VolumeService,
} from "@stowage/proto";
import type { AuditRow, Queryable } from "@stowage/store";
import { createLogger } from "@stowage/telemetry";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { codeText, createAuditInterceptor, isAuditedMethod } from "./audit.js";
import { createAuthInterceptor, parseTokens, peerContext, peerKey, storedTokens } from "./auth.js";
import { createErrorInterceptor } from "./errors.js";
import { auditRoutes, decodeAuditPageToken, encodeAuditPageToken } from "./routes/audit.js";
import { tokenRoutes } from "./routes/tokens.js";
import { volumeRoutes } from "./routes/volumes.js";
import { countRows, GiB, openServiceFixture, type ServiceFixture } from "./testing/service-fixture.js";
import { createNulStringInterceptor } from "./validate.js";

const TOKENS = "root:admin:adm-secret,otto:operator:op-secret,vera:viewer:view-secret";
const PASTED = `stw_${"c3".repeat(32)}`;

/** An audit row as the test reads it: the store's row, its id as text and without its time. */
type AuditRowText = Omit<AuditRow, "id" | "at"> & { id: string };

/** The controller's interceptors in the controller's order, on a real h2c socket (the source is its address). */
describe("audit trail through the API", () => {
  let f: ServiceFixture;
  let server: http2.Http2Server;
  let url: string;
  const sessions: Http2SessionManager[] = [];

  const clients = (token?: string) => {
    const sessionManager = new Http2SessionManager(url);
    sessions.push(sessionManager);
    const transport = createGrpcTransport({
      baseUrl: url,
      sessionManager,
      interceptors: token
        ? [
            (next) => (req) => {
              req.header.set("authorization", `Bearer ${token}`);
              return next(req);
            },
          ]
        : [],
    });
    return {
      volumes: createClient(VolumeService, transport),
      tokens: createClient(TokenService, transport),
      audit: createClient(AuditService, transport),
    };
  };
  /** The rows written since `after` (an id), oldest first. */
  const rowsAfter = async (after: string) =>
    f.sql<AuditRowText[]>`select id::text as id, actor, role, source, action, target, request, outcome, error
      from audit_log a where a.id > ${after}::bigint order by a.id`;
  const lastId = async () => {
    const [r] = await f.sql<{ id: string }[]>`select coalesce(max(id), 0)::text as id from audit_log`;
    return r!.id;
  };
  const code = async (p: Promise<unknown>) => {
    try {
      await p;
      return Code[0];
    } catch (e) {
      return Code[ConnectError.from(e).code];
    }
  };

  beforeAll(async () => {
    f = await openServiceFixture();
    await f.addPool("p1", "dir", ["raw"]);
    const log = f.ctx.log;
    const handler = connectNodeAdapter({
      routes: (router) => {
        router.service(VolumeService, volumeRoutes(f.ctx));
        router.service(TokenService, tokenRoutes(f.ctx));
        router.service(AuditService, auditRoutes(f.ctx));
      },
      interceptors: [
        createAuditInterceptor(f.ctx.sql, log),
        createErrorInterceptor(log),
        createAuthInterceptor(parseTokens(TOKENS), storedTokens(f.ctx)),
        createNulStringInterceptor(),
      ],
      contextValues: peerContext,
    });
    server = http2.createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    for (const s of sessions) s.abort();
    await new Promise<void>((resolve) => server?.close(() => resolve()));
    await f?.close();
  });

  it("a viewer creating a volume is refused (PERMISSION_DENIED), nothing is made, and exactly one denied row says who", async () => {
    const before = await lastId();
    const req = { name: "v-viewer", sizeBytes: GiB, format: VolumeFormat.RAW };
    expect(await code(clients("view-secret").volumes.createVolume(req))).toBe("PermissionDenied");
    const rows = await rowsAfter(before);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      actor: "vera",
      role: "viewer",
      source: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
      action: "CreateVolume",
      target: "v-viewer",
      outcome: "denied",
      error: expect.stringMatching(/^permission_denied: vera \(viewer\) may not call CreateVolume/),
    });
    expect(rows[0]!.request).toMatchObject({
      name: "v-viewer",
      sizeBytes: String(GiB),
      format: "VOLUME_FORMAT_RAW",
    });
    expect(await countRows(f.sql, "volumes")).toBe(0);
  });

  it("a call without a token is refused (UNAUTHENTICATED) and audited as unauthenticated, without a role", async () => {
    const before = await lastId();
    expect(await code(clients().volumes.deleteVolume({ volume: "anything" }))).toBe("Unauthenticated");
    const rows = await rowsAfter(before);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      actor: "unauthenticated",
      role: "",
      source: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
      action: "DeleteVolume",
      target: "anything",
      outcome: "denied",
    });
    // A wrong token is refused the same way, and its secret is not what the row keeps.
    const again = await lastId();
    expect(await code(clients(PASTED).volumes.deleteVolume({ volume: "anything" }))).toBe("Unauthenticated");
    const [wrong] = await rowsAfter(again);
    expect(wrong).toMatchObject({ actor: "unauthenticated", outcome: "denied" });
    expect(JSON.stringify(wrong)).not.toContain(PASTED.slice(4));
  });

  it("a successful create leaves exactly one ok row, with the caller's role and address", async () => {
    const before = await lastId();
    const res = await clients("op-secret").volumes.createVolume({
      name: "v-ok",
      sizeBytes: GiB,
      format: VolumeFormat.RAW,
    });
    const rows = await rowsAfter(before);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      actor: "otto",
      role: "operator",
      source: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
      action: "CreateVolume",
      target: res.volume!.id,
      outcome: "ok",
    });
  });

  it("a mutation written in a transaction carries the role and address too (the call's context reaches it)", async () => {
    const before = await lastId();
    await clients("op-secret").volumes.deleteVolume({ volume: "v-ok" });
    const rows = await rowsAfter(before);
    expect(rows.map((r) => [r.actor, r.role, r.action, r.outcome])).toEqual([
      ["otto", "operator", "DeleteVolume", "ok"],
    ]);
    expect(rows[0]!.source).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it("concurrent calls of different callers each audit their own role and address", async () => {
    const before = await lastId();
    const callers = [clients("op-secret"), clients("adm-secret")];
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 12; i++)
      calls.push(callers[i % 2]!.volumes.deleteVolume({ volume: `v-missing-${i}` }).catch(() => {}));
    for (let i = 0; i < 6; i++)
      calls.push(
        callers[i % 2]!.volumes.createVolume({
          name: `v-par-${i}`,
          sizeBytes: GiB,
          format: VolumeFormat.RAW,
        }),
      );
    await Promise.all(calls);
    const rows = await rowsAfter(before);
    expect(rows).toHaveLength(18);
    const sources = new Set(rows.map((r) => r.source));
    expect(sources.size).toBe(2);
    for (const r of rows) {
      expect([r.actor, r.role]).toEqual(r.actor === "otto" ? ["otto", "operator"] : ["root", "admin"]);
      const t = r.target.startsWith("vol-")
        ? (await f.sql`select name from volumes where id = ${r.target}`)[0]!.name
        : r.target;
      expect(Number(String(t).split("-").pop()) % 2, `${r.actor} ${t}`).toBe(r.actor === "otto" ? 0 : 1);
    }
    // Each caller's rows carry its own connection's address.
    expect(new Set(rows.filter((r) => r.actor === "otto").map((r) => r.source)).size).toBe(1);
  });

  it("a refused bad request leaves exactly one error row", async () => {
    const before = await lastId();
    const op = clients("op-secret").volumes;
    expect(await code(op.createVolume({ name: "Bad Name!", sizeBytes: GiB }))).toBe("InvalidArgument");
    const rows = await rowsAfter(before);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      actor: "otto",
      role: "operator",
      action: "CreateVolume",
      outcome: "error",
      error: expect.stringMatching(/^invalid_argument: /),
    });
    // Refused inside its transaction (rolled back): the interceptor's row is the only one.
    const mid = await lastId();
    expect(await code(op.deleteVolume({ volume: "no-such-volume" }))).toBe("NotFound");
    expect((await rowsAfter(mid)).map((r) => [r.action, r.target, r.outcome])).toEqual([
      ["DeleteVolume", "no-such-volume", "error"],
    ]);
  });

  it("a placement refusal the service audits itself is not written twice", async () => {
    const before = await lastId();
    const req = { name: "v-huge", sizeBytes: 1000n * GiB, format: VolumeFormat.RAW };
    expect(await code(clients("op-secret").volumes.createVolume(req))).toBe("ResourceExhausted");
    const rows = await rowsAfter(before);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      actor: "otto",
      role: "operator",
      source: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
      action: "CreateVolume",
      target: "v-huge",
      outcome: "error",
    });
  });

  it("token calls are audited with the admin's role, and a pasted secret never reaches the row", async () => {
    const before = await lastId();
    const admin = clients("adm-secret");
    const made = await admin.tokens.createToken({ name: "ci", role: TokenRole.VIEWER });
    expect(await code(admin.tokens.revokeToken({ token: PASTED }))).toBe("InvalidArgument");
    await admin.tokens.revokeToken({ token: "ci" });
    // An operator may not manage tokens.
    expect(await code(clients("op-secret").tokens.createToken({ name: "x", role: TokenRole.ADMIN }))).toBe(
      "PermissionDenied",
    );
    const rows = await rowsAfter(before);
    expect(rows.map((r) => [r.actor, r.role, r.action, r.outcome])).toEqual([
      ["root", "admin", "CreateToken", "ok"],
      ["root", "admin", "RevokeToken", "error"],
      ["root", "admin", "RevokeToken", "ok"],
      ["otto", "operator", "CreateToken", "denied"],
    ]);
    expect(rows[0]!.target).toBe(made.token!.id);
    expect(rows[1]!.target).toBe("[redacted]");
    expect(rows[2]!.request).toEqual({ ref: "ci" });
    const all = JSON.stringify(rows);
    expect(all).not.toContain(PASTED.slice(4));
    expect(all).not.toContain(made.secret.slice(4));
  });

  it("ListAuditEvents filters, pages newest first and refuses bad arguments; it is for admins only", async () => {
    const admin = clients("adm-secret").audit;
    const vera = await admin.listAuditEvents({ actor: "vera" });
    expect(vera.events.map((e) => [e.action, e.role, e.outcome])).toEqual([
      ["CreateVolume", "viewer", "denied"],
    ]);
    expect(vera.events[0]!.source).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(JSON.parse(vera.events[0]!.requestJson)).toMatchObject({ name: "v-viewer" });
    const denied = await admin.listAuditEvents({ outcome: "denied" });
    expect(denied.events.length).toBeGreaterThanOrEqual(4);
    expect(denied.events.every((e) => e.outcome === "denied")).toBe(true);
    expect((await admin.listAuditEvents({ action: "DeleteVolume", target: "v-ok" })).events).toHaveLength(0);
    expect((await admin.listAuditEvents({ action: "DeleteVolume", outcome: "ok" })).events).toHaveLength(1);
    const future = timestampFromDate(new Date(Date.now() + 3_600_000));
    expect((await admin.listAuditEvents({ since: future })).events).toEqual([]);
    const past = timestampFromDate(new Date(Date.now() - 3_600_000));
    expect((await admin.listAuditEvents({ until: past })).events).toEqual([]);

    const everything = (await admin.listAuditEvents({ pageSize: 1000 })).events.map((e) => e.id);
    expect(everything.length).toBeGreaterThan(5);
    expect(everything).toEqual([...everything].sort((a, b) => (a > b ? -1 : 1)));
    const paged: bigint[] = [];
    let pageToken = "";
    for (let i = 0; i < 100; i++) {
      const page = await admin.listAuditEvents({ pageSize: 2, pageToken });
      paged.push(...page.events.map((e) => e.id));
      if (!page.nextPageToken) break;
      expect(page.events).toHaveLength(2);
      pageToken = page.nextPageToken;
    }
    expect(paged).toEqual(everything);

    for (const bad of [
      { pageSize: 1001 },
      { pageToken: "garbage!" },
      { pageToken: Buffer.from("audit:12x").toString("base64url") },
      { outcome: "maybe" },
      { since: future, until: past },
      { actor: "a".repeat(600) },
      { since: { seconds: 8_000_000_000_000n, nanos: 0 } },
      { until: { seconds: -70_000_000_000n, nanos: 0 } },
      { since: { seconds: 0n, nanos: -1 } },
    ])
      expect(await code(admin.listAuditEvents(bad)), Object.keys(bad).join()).toBe("InvalidArgument");
    expect(await code(clients("op-secret").audit.listAuditEvents({}))).toBe("PermissionDenied");
    expect(await code(clients().audit.listAuditEvents({}))).toBe("Unauthenticated");
  });
});

describe("audit interceptor", () => {
  it("answers the caller's own refusal when the audit write fails, and logs that", async () => {
    const lines: string[] = [];
    const log = pino(
      { level: "debug" },
      new Writable({
        write(chunk, _e, cb) {
          lines.push(String(chunk));
          cb();
        },
      }),
    );
    const broken = Object.assign(() => Promise.reject(new Error("database is away")), {
      json: (v: unknown) => v,
    }) as unknown as Queryable;
    const deny: Interceptor = () => () => {
      throw new ConnectError(
        "vera (viewer) may not call CreateVolume: it needs the operator role",
        Code.PermissionDenied,
      );
    };
    const transport = createRouterTransport((router) => router.service(VolumeService, {}), {
      router: { interceptors: [createAuditInterceptor(broken, log as never), deny] },
    });
    const err = await createClient(VolumeService, transport)
      .createVolume({ name: "x" })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.PermissionDenied });
    expect(lines.join("")).toContain("audit write of a failed call failed");
  });

  it("names a refused certificate's host, and a refused Join by the host it asked for, never its token", async () => {
    const written: unknown[][] = [];
    const sql = Object.assign(
      (_strings: TemplateStringsArray, ...values: unknown[]) => {
        written.push(values);
        return Promise.resolve([]);
      },
      { json: (v: unknown) => v },
    ) as unknown as Queryable;
    const peer =
      (host?: string): Interceptor =>
      (next) =>
      (req) => {
        req.contextValues.set(peerKey, { address: "203.0.113.5:40000", ...(host ? { host } : {}) });
        return next(req);
      };
    const refuse =
      (code: Code): Interceptor =>
      () =>
      () => {
        throw new ConnectError("refused", code);
      };
    const call = async (interceptors: Interceptor[]) => {
      const transport = createRouterTransport((router) => router.service(AgentService, {}), {
        router: {
          interceptors: [createAuditInterceptor(sql, createLogger("test", "silent")), ...interceptors],
        },
      });
      const agents = createClient(AgentService, transport);
      await agents.join({ joinToken: PASTED, hostName: "node5", csrPem: "csr" }).catch(() => {});
      await agents.renewCertificate({ csrPem: "csr" }).catch(() => {});
    };
    await call([peer("node5"), refuse(Code.Unauthenticated)]);
    await call([peer(), refuse(Code.PermissionDenied)]);
    // actor, role, source, action, target, request, outcome, error
    expect(written.map((v) => [v[0], v[1], v[2], v[3], v[4], v[6]])).toEqual([
      ["host:node5", "", "203.0.113.5:40000", "Join", "node5", "denied"],
      ["host:node5", "", "203.0.113.5:40000", "RenewCertificate", "node5", "denied"],
      ["anonymous", "", "203.0.113.5:40000", "Join", "node5", "denied"],
      ["anonymous", "", "203.0.113.5:40000", "RenewCertificate", "", "denied"],
    ]);
    expect(written[0]![5]).toEqual({ joinToken: "[redacted]", hostName: "node5", csrPem: "csr" });
    expect(JSON.stringify(written)).not.toContain(PASTED.slice(4));
  });

  it("audits mutating methods only", () => {
    expect(isAuditedMethod("stowage.v1.VolumeService", "CreateVolume")).toBe(true);
    expect(isAuditedMethod("stowage.v1.AgentService", "Join")).toBe(true);
    expect(isAuditedMethod("stowage.v1.AgentService", "RegisterAgent")).toBe(true);
    for (const m of ["GetVolume", "ListVolumes", "WatchVolumes", "ExplainPlacement"])
      expect(isAuditedMethod("stowage.v1.VolumeService", m)).toBe(false);
    expect(isAuditedMethod("grpc.health.v1.Health", "Check")).toBe(false);
    expect(isAuditedMethod("stowage.v1.AuditService", "ListAuditEvents")).toBe(false);
    expect(codeText(Code.FailedPrecondition)).toBe("failed_precondition");
  });

  it("round-trips page tokens and refuses forged ones", () => {
    expect(decodeAuditPageToken(encodeAuditPageToken(42n))).toBe(42n);
    expect(decodeAuditPageToken("")).toBeUndefined();
    for (const bad of [
      "x",
      Buffer.from("audit:0").toString("base64url"),
      Buffer.from("audit:99999999999999999999").toString("base64url"),
    ])
      expect(() => decodeAuditPageToken(bad)).toThrow(/page_token is not valid/);
  });
});
