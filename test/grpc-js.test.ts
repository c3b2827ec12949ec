import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { natsAvailable } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Cluster, ROOT, startCluster, waitFor } from "./support/cluster.js";

// biome-ignore lint/suspicious/noExplicitAny: a dynamically loaded gRPC client has no static types, as for any third-party client
type Client = any;

/** Calls a unary method and resolves with the response or rejects with the grpc-js ServiceError. */
function call<T>(client: Client, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) =>
    client[method](req, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res))),
  );
}

describe.skipIf(!natsAvailable())("the public API through a plain @grpc/grpc-js client", () => {
  let c: Cluster;
  let volumes: Client;
  let hosts: Client;
  let exports: Client;
  let migrations: Client;

  beforeAll(async () => {
    c = await startCluster({ database: "pglite", agents: ["gnode1"] });
    const def = protoLoader.loadSync(
      [
        "stowage/v1/volume.proto",
        "stowage/v1/host.proto",
        "stowage/v1/export.proto",
        "stowage/v1/migration.proto",
      ],
      {
        includeDirs: [join(ROOT, "proto")],
        longs: String,
        enums: String,
        defaults: true,
        oneofs: true,
      },
    );
    // biome-ignore lint/suspicious/noExplicitAny: see Client
    const pkg = grpc.loadPackageDefinition(def) as any;
    const address = `127.0.0.1:${c.grpcPort}`;
    volumes = new pkg.stowage.v1.VolumeService(address, grpc.credentials.createInsecure());
    hosts = new pkg.stowage.v1.HostService(address, grpc.credentials.createInsecure());
    exports = new pkg.stowage.v1.ExportService(address, grpc.credentials.createInsecure());
    migrations = new pkg.stowage.v1.MigrationService(address, grpc.credentials.createInsecure());
  }, 180_000);
  afterAll(async () => {
    volumes?.close();
    hosts?.close();
    exports?.close();
    migrations?.close();
    await c?.stop();
  });

  it("lists hosts", async () => {
    const res = await call<{ hosts: { id: string; state: string }[] }>(hosts, "ListHosts", {});
    expect(res.hosts.map((h) => [h.id, h.state])).toEqual([["gnode1", "HOST_STATE_UP"]]);
  });

  it("creates a volume and reads it back until it is available", async () => {
    const created = await call<{ volume: { id: string; state: string; sizeBytes: string } }>(
      volumes,
      "CreateVolume",
      {
        name: "grpc-disk",
        sizeBytes: String(64 * 1024 * 1024),
        format: "VOLUME_FORMAT_QCOW2",
      },
    );
    expect(created.volume.state).toBe("VOLUME_STATE_CREATING");
    expect(created.volume.sizeBytes).toBe("67108864");
    const v = await waitFor("available", async () => {
      const r = await call<{ volume: { state: string; hostPath: string } }>(volumes, "GetVolume", {
        volume: created.volume.id,
      });
      return r.volume.state === "VOLUME_STATE_AVAILABLE" ? r.volume : undefined;
    });
    expect(v.hostPath).toMatch(/vol-[0-9a-f]{32}\.qcow2$/);
  });

  it("streams volume changes", async () => {
    const stream = volumes.WatchVolumes({ volume: "grpc-disk" });
    const first = await new Promise<{ type: string; volume: { name: string } }>((resolve, reject) => {
      stream.once("data", resolve);
      stream.once("error", reject);
    });
    stream.cancel();
    expect(first.type).toBe("VOLUME_EVENT_TYPE_SNAPSHOT");
    expect(first.volume.name).toBe("grpc-disk");
  });

  it("maps bad input to INVALID_ARGUMENT and unknown things to NOT_FOUND, with a message", async () => {
    await expect(
      call(volumes, "CreateVolume", { name: "../x", sizeBytes: "1073741824" }),
    ).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(/volume name "..\/x" is not valid/),
    });
    await expect(call(volumes, "CreateVolume", { name: "y", sizeBytes: "0" })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
    });
    await expect(
      call(volumes, "CreateVolume", {
        name: "y",
        sizeBytes: "1073741824",
        constraints: { poolId: "gnode1/nope" },
      }),
    ).rejects.toMatchObject({
      code: grpc.status.NOT_FOUND,
      details: expect.stringMatching(/pool gnode1\/nope not found/),
    });
    await expect(call(volumes, "GetVolume", { volume: "missing" })).rejects.toMatchObject({
      code: grpc.status.NOT_FOUND,
    });
    const list = await call<{ volumes: { name: string }[] }>(volumes, "ListVolumes", {});
    expect(list.volumes.map((v) => v.name)).toEqual(["grpc-disk"]);
  });

  it("refuses enum numbers this build does not know (format, wipe, a list filter) instead of reading them as the default", async () => {
    await expect(
      call(volumes, "CreateVolume", { name: "odd-format", sizeBytes: "1073741824", format: 99 }),
    ).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(/format/),
    });
    await expect(call(volumes, "DeleteVolume", { volume: "grpc-disk", wipe: 99 })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: expect.stringMatching(/wipe/),
    });
    await expect(call(volumes, "ListVolumes", { state: 99 })).rejects.toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
    });
    const list = await call<{ volumes: { name: string; state: string }[] }>(volumes, "ListVolumes", {});
    expect(list.volumes.map((v) => [v.name, v.state])).toEqual([["grpc-disk", "VOLUME_STATE_AVAILABLE"]]);
  });

  it("answers a 3 MiB label value with a short INVALID_ARGUMENT, not a reset stream", async () => {
    const err = await call(volumes, "CreateVolume", {
      name: "big-label",
      sizeBytes: "1073741824",
      labels: { note: "x".repeat(3 * 1024 * 1024) },
    }).catch((e: grpc.ServiceError) => e);
    expect(err).toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    expect((err as grpc.ServiceError).details.length).toBeLessThan(2048);
    await expect(call(volumes, "GetVolume", { volume: "big-label" })).rejects.toMatchObject({
      code: grpc.status.NOT_FOUND,
    });
  });

  it("lists exports (none yet)", async () => {
    await expect(call(exports, "ListExports", {})).resolves.toMatchObject({ exports: [] });
  });

  it("reports what is not built yet as UNIMPLEMENTED", async () => {
    await expect(call(migrations, "ListMigrations", {})).rejects.toMatchObject({
      code: grpc.status.UNIMPLEMENTED,
    });
  });
});
