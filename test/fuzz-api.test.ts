import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { type Bus, connectBus, heartbeatSubject, resultSubject } from "@stowage/bus";
import {
  AgentService,
  HeartbeatSchema,
  OperationKind,
  OperationResultSchema,
  PoolKind,
  SnapshotService,
  VolumeFormat,
  VolumeService,
} from "@stowage/proto";
import type { Sql } from "@stowage/store";
import { makeTempDir, type NatsServer, natsAvailable, startNats } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadControllerConfig } from "../apps/controller/src/config.js";
import { type ControllerHandle, startController } from "../apps/controller/src/controller.js";
import { waitFor } from "./support/cluster.js";
import {
  allMethods,
  type Dictionary,
  type FuzzMethod,
  fuzzCases,
  fuzzSeed,
  hash32,
  hex,
  MUTATIONS,
  mutate,
  plausible,
  randomBody,
  rng,
} from "./support/fuzz.js";

/**
 * Issue 10's API fuzzing: every method of every service in proto/stowage/v1 (enumerated from the generated
 * descriptors) gets random bytes and structure-aware mutations of plausible requests over real gRPC
 * (@grpc/grpc-js with an identity serializer, so malformed protobuf reaches the server). Every answer must be a
 * well-formed gRPC status in bounded time, never INTERNAL (or a reset stream, which grpc-js reports as INTERNAL
 * or UNAVAILABLE); the controller must keep serving; and a refused request, or any read, must leave the
 * database's digest as it was. The controller runs in this process so the digest can be read through its own
 * PGlite connection (PGlite serves one connection).
 */

const SEED = fuzzSeed();
/** Cases of each kind (random bytes, mutations) per method; STOWAGE_FUZZ_CASES for a longer run. */
const CASES = fuzzCases(100);
/**
 * Each method's cases stop after this long (they alternate random bytes and mutations, so both kinds run), which
 * bounds the suite on a loaded machine; STOWAGE_FUZZ_BUDGET_MS=0 runs every case.
 */
const BUDGET_MS = Number(process.env.STOWAGE_FUZZ_BUDGET_MS ?? 2_000);
/** A streaming call that is still streaming after this long is healthy: it is cancelled. */
const STREAM_MS = 150;
/** The most one call may take, a 4 MiB request included. */
const CALL_DEADLINE_MS = 15_000;
const GiB = 1024n * 1024n * 1024n;
const HOST = "fz-host";

/** Codes a refused request may get. INTERNAL, UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED and DATA_LOSS never. */
const ACCEPTED = new Set([
  grpc.status.OK,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.OUT_OF_RANGE,
  // No capacity for a plausible create; also a request past the server's size limit.
  grpc.status.RESOURCE_EXHAUSTED,
  // Exports and migration plans are not built yet.
  grpc.status.UNIMPLEMENTED,
  // A mutation that races the suite's own earlier mutation of the same volume.
  grpc.status.ABORTED,
]);

const READ_ONLY = /^(Get|List|Watch|Explain)/;

interface Outcome {
  code: number;
  details: string;
  /** A streaming call still streaming when cancelled. */
  streaming?: boolean;
  response?: Buffer;
  ms: number;
}

/**
 * The fuzz calls as an admin: the fuzz of TokenService creates tokens, and a live stored token turns
 * authentication on (docs/operating.md), so the controller runs with one configured token from the start.
 */
const ADMIN_SECRET = "fuzz-admin-secret-0123456789abcdef";
const authed = () => {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${ADMIN_SECRET}`);
  return md;
};

function callRaw(client: grpc.Client, m: FuzzMethod, body: Uint8Array): Promise<Outcome> {
  const t0 = Date.now();
  const identity = (b: Buffer) => b;
  const deadline = Date.now() + CALL_DEADLINE_MS;
  return new Promise((resolve) => {
    if (!m.streaming) {
      client.makeUnaryRequest(
        m.path,
        identity,
        identity,
        Buffer.from(body),
        authed(),
        { deadline },
        (err, res) =>
          resolve(
            err
              ? { code: err.code, details: err.details ?? "", ms: Date.now() - t0 }
              : { code: 0, details: "", response: res, ms: Date.now() - t0 },
          ),
      );
      return;
    }
    let cancelled = false;
    let received = 0;
    const call = client.makeServerStreamRequest(m.path, identity, identity, Buffer.from(body), authed(), {
      deadline,
    });
    call.on("data", () => {
      received++;
    });
    call.on("error", () => {});
    const timer = setTimeout(() => {
      cancelled = true;
      call.cancel();
    }, STREAM_MS);
    call.on("status", (s: grpc.StatusObject) => {
      clearTimeout(timer);
      if (cancelled && s.code === grpc.status.CANCELLED)
        resolve({
          code: 0,
          details: `streaming, ${received} messages`,
          streaming: true,
          ms: Date.now() - t0,
        });
      else resolve({ code: s.code, details: s.details, ms: Date.now() - t0 });
    });
  });
}

/**
 * Row counts and the latest change of the tables a refused request must not touch. The audit log is counted by
 * its successes only: a refused placement is audited by design (outcome 'error'), a row the fuzz expects. Hosts
 * by count and registration only: a host the fuzz registered goes down by itself when it sends no heartbeats.
 */
async function digest(sql: Sql): Promise<string> {
  const [row] = await sql`
    select
      (select count(*) from volumes) || '/' || coalesce((select max(updated_at)::text from volumes), '') as volumes,
      (select count(*) from operations) || '/' || coalesce((select max(updated_at)::text from operations), '') as operations,
      (select count(*) from reservations) || '/' || coalesce((select max(updated_at)::text from reservations), '') as reservations,
      (select count(*) from pools) || '/' || coalesce((select max(updated_at)::text from pools), '') as pools,
      (select count(*) from snapshots) || '/' || coalesce((select max(updated_at)::text from snapshots), '') as snapshots,
      (select count(*) from hosts) || '/' || coalesce((select max(registered_at)::text from hosts), '') as hosts,
      (select count(*) from audit_log where outcome = 'ok') || '/' ||
        coalesce((select max(id)::text from audit_log where outcome = 'ok'), '') as audit`;
  return JSON.stringify(row);
}

const why = natsAvailable() ? "" : " - skipped: no nats-server on PATH (or STOWAGE_NATS_SERVER)";

describe.skipIf(why !== "")(`API fuzzing, seed ${SEED} (STOWAGE_FUZZ_SEED=${SEED} replays it)${why}`, () => {
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  let nats: NatsServer;
  let handle: ControllerHandle;
  let bus: Bus;
  let client: grpc.Client;
  let sql: Sql;
  let heartbeats: NodeJS.Timeout | undefined;
  const dict: Dictionary = { byField: {}, any: [] };
  const methods = allMethods().sort(
    // What destroys the seeded volume runs last, so the others find it.
    (a, b) => Number(/^(Delete|Revert)/.test(a.name)) - Number(/^(Delete|Revert)/.test(b.name)),
  );
  const stats = new Map<string, Map<number, number>>();
  const timeByKind = new Map<string, { n: number; ms: number }>();

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-fuzz-api-");
    nats = await startNats({ dir: join(tmp.path, "nats") });
    const config = loadControllerConfig(
      {},
      {
        dataDir: join(tmp.path, "controller"),
        natsUrl: nats.url,
        grpcListen: "127.0.0.1:0",
        metricsListen: "127.0.0.1:0",
        // Nothing changes by itself while the fuzz runs: the host stays up, reservations and sends are fresh.
        hostDownAfterMs: 15_000,
        reservationTtlMs: 15 * 60_000,
        resendAfterMs: 5 * 60_000,
        logLevel: "error",
        apiTokens: `fuzz:admin:${ADMIN_SECRET}`,
      },
    );
    handle = await startController(config);
    sql = handle.context.sql;
    bus = await connectBus({ servers: nats.url, name: "fuzz-api" });
    const address = `127.0.0.1:${handle.grpcPort}`;
    client = new grpc.Client(address, grpc.credentials.createInsecure());

    // Seed: a host with a pool, an available volume with a snapshot, so mutations reach past "not found".
    const transport = createGrpcTransport({
      baseUrl: `http://${address}`,
      interceptors: [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${ADMIN_SECRET}`);
          return next(req);
        },
      ],
    });
    const agent = createClient(AgentService, transport);
    await agent.registerAgent({
      host: {
        name: HOST,
        cpuCount: 4,
        memoryBytes: 8n * GiB,
        numaNodes: [{ id: 0, cpuList: "0-3", cpus: [0, 1, 2, 3] }],
      },
      pools: [
        {
          name: "default",
          kind: PoolKind.DIR,
          healthy: true,
          totalBytes: 1024n * GiB,
          freeBytes: 1024n * GiB,
          formats: [VolumeFormat.QCOW2, VolumeFormat.RAW],
        },
      ],
    });
    const beat = () =>
      bus.nc.publish(
        heartbeatSubject(HOST),
        toBinary(
          HeartbeatSchema,
          create(HeartbeatSchema, { hostId: HOST, sequence: BigInt(Date.now()), bootId: "b" }),
        ),
      );
    beat();
    heartbeats = setInterval(beat, 1000);
    const volumes = createClient(VolumeService, transport);
    const created = await volumes.createVolume({
      name: "fz-vol",
      sizeBytes: GiB,
      format: VolumeFormat.QCOW2,
    });
    const vol = created.volume!;
    const finish = async (operationId: string, kind: OperationKind, artifact?: object) =>
      bus.js.publish(
        resultSubject(HOST),
        toBinary(
          OperationResultSchema,
          create(OperationResultSchema, { operationId, hostId: HOST, kind, success: true, artifact }),
        ),
      );
    await finish(created.operation!.id, OperationKind.CREATE_VOLUME, {
      volumeId: vol.id,
      poolName: "default",
      sizeBytes: GiB,
      format: VolumeFormat.QCOW2,
      path: `/pools/${vol.id}.qcow2`,
    });
    await waitFor(
      "the seeded volume",
      async () => (await volumes.getVolume({ volume: vol.id })).volume?.state === 2,
    );
    const snaps = createClient(SnapshotService, transport);
    const snap = await snaps.createSnapshot({ volume: vol.id, name: "fz-snap" });
    await finish(snap.operation!.id, OperationKind.CREATE_SNAPSHOT);
    await waitFor(
      "the seeded snapshot",
      async () => (await snaps.getSnapshot({ volume: vol.id, snapshot: "fz-snap" })).snapshot?.state === 2,
    );
    const strings = {
      volume: [vol.id, "fz-vol", "fz-nope"],
      host: [HOST, "fz-nope"],
      pool: [`${HOST}/default`, "default", `${HOST}/nope`],
      snapshot: [snap.snapshot!.id, "fz-snap"],
      operation: [created.operation!.id, snap.operation!.id],
      name: ["fz-new", "fz-vol", "fz-snap", "default"],
    };
    Object.assign(dict.byField, {
      volume: strings.volume,
      volume_id: strings.volume,
      source_volume: strings.volume,
      source_volume_id: strings.volume,
      host: strings.host,
      host_id: strings.host,
      pool: strings.pool,
      pool_id: strings.pool,
      pool_name: strings.pool,
      snapshot: strings.snapshot,
      snapshot_id: strings.snapshot,
      source_snapshot: strings.snapshot,
      operation: strings.operation,
      operation_id: strings.operation,
      id: [...strings.operation, ...strings.volume],
      name: strings.name,
      new_name: strings.name,
      request_id: ["fz-req-1", "fz-req-2"],
      page_token: ["", "0", "bm9wZQ"],
      zone: ["z1", ""],
    });
    dict.any = Object.values(strings).flat();
  }, 120_000);

  afterAll(async () => {
    if (heartbeats) clearInterval(heartbeats);
    client?.close();
    await bus?.close();
    await handle?.stop();
    await nats?.stop();
    await tmp?.cleanup();
    const lines = [...stats].map(
      ([m, codes]) =>
        `${m}: ${[...codes]
          .sort((a, b) => a[0] - b[0])
          .map(([c, n]) => (c === -1 ? `${n} cases:` : `${grpc.status[c] ?? c}=${n}`))
          .join(" ")}`,
    );
    const times = [...timeByKind].map(([k, t]) => `${k} ${t.n} cases ${t.ms} ms`).join(", ");
    console.log(
      `fuzz-api seed ${SEED}, ${CASES} cases of each kind per method (${times})\n${lines.join("\n")}`,
    );
  });

  it("enumerates every service of proto/stowage/v1 from the descriptors", () => {
    const services = new Set(methods.map((m) => m.service.typeName));
    expect([...services].sort()).toEqual([
      "grpc.health.v1.Health",
      "stowage.v1.AgentService",
      "stowage.v1.AuditService",
      "stowage.v1.ExportService",
      "stowage.v1.FindingService",
      "stowage.v1.HostService",
      "stowage.v1.MigrationService",
      "stowage.v1.OperationService",
      "stowage.v1.PlacementService",
      "stowage.v1.PoolService",
      "stowage.v1.SnapshotService",
      "stowage.v1.TokenService",
      "stowage.v1.VolumeService",
    ]);
    expect(methods.length).toBeGreaterThanOrEqual(38);
  });

  for (const m of methods) {
    it(`${m.service.name}.${m.name}`, { timeout: 120_000 }, async () => {
      const r = rng((SEED ^ hash32(m.path)) >>> 0);
      const codes = new Map<number, number>();
      stats.set(`${m.service.name}.${m.name}`, codes);
      codes.set(-1, 0);
      const failures: string[] = [];
      let before = await digest(sql);
      const readOnly = READ_ONLY.test(m.name);
      const total = CASES * 2;
      const started = Date.now();
      let ran = 0;
      for (let i = 0; i < total; i++) {
        if (BUDGET_MS > 0 && Date.now() - started > BUDGET_MS) break;
        const kind = i % 2 === 0 ? "random" : MUTATIONS[((i - 1) / 2) % MUTATIONS.length]!;
        // A 4 MiB string costs a few hundred ms on a loaded machine; one per method.
        if (kind === "huge-string" && i >= MUTATIONS.length * 2) continue;
        ran++;
        let body: Uint8Array;
        try {
          body =
            kind === "random"
              ? randomBody(r, () => toBinary(m.input, plausible(r, m.input, dict) as never))
              : mutate(r, m.input, plausible(r, m.input, dict), kind);
        } catch (err) {
          failures.push(`case ${i} (${kind}): the suite could not build it: ${(err as Error).message}`);
          continue;
        }
        const t0 = Date.now();
        const out = await callRaw(client, m, body);
        codes.set(out.code, (codes.get(out.code) ?? 0) + 1);
        const what = `case ${i} (${kind}, ${hex(body)})`;
        if (!ACCEPTED.has(out.code))
          failures.push(`${what}: ${grpc.status[out.code]} ${out.details.slice(0, 200)}`);
        else if (out.details.length > 2048)
          failures.push(`${what}: a ${out.details.length}-character message`);
        if (out.response) {
          try {
            fromBinary(m.output, out.response);
          } catch (err) {
            failures.push(`${what}: an answer that does not decode: ${(err as Error).message}`);
          }
        }
        const after = await digest(sql);
        if (after !== before) {
          if (out.code === 0 && !readOnly && !out.streaming) {
            // An accepted mutation: the new state is the baseline once what it started has settled.
            await new Promise((res) => setTimeout(res, 30));
            before = await digest(sql);
          } else {
            failures.push(
              `${what}: ${grpc.status[out.code]} and the database changed: ${before} -> ${after}`,
            );
            before = after;
          }
        }
        codes.set(-1, ran);
        const t = timeByKind.get(kind) ?? { n: 0, ms: 0 };
        t.n++;
        t.ms += Date.now() - t0;
        timeByKind.set(kind, t);
        if (failures.length >= 20) break;
      }
      // Still serving after the batch.
      const health = await callRaw(
        client,
        allMethods().find((x) => x.name === "ListHosts")!,
        new Uint8Array(),
      );
      expect(health.code, "ListHosts after the batch").toBe(0);
      expect(failures, `seed ${SEED}: replay with STOWAGE_FUZZ_SEED=${SEED}`).toEqual([]);
    });
  }
});
