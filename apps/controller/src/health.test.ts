import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { makeTempDir, type NatsServer, natsAvailable, startNats } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadControllerConfig } from "./config.js";
import { type ControllerHandle, startController } from "./controller.js";

const ROOT = join(import.meta.dirname, "../../..");
// biome-ignore lint/suspicious/noExplicitAny: a dynamically loaded gRPC client has no static types
type Client = any;

function check(client: Client, service: string): Promise<string> {
  return new Promise((resolve, reject) =>
    client.Check({ service }, (err: grpc.ServiceError | null, res: { status: string }) =>
      err ? reject(err) : resolve(res.status),
    ),
  );
}

/** The first `n` statuses a Watch sends. */
function watch(client: Client, service: string, n: number, whileOpen?: () => unknown): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const seen: string[] = [];
    const stream = client.Watch({ service });
    stream.on("data", (m: { status: string }) => {
      seen.push(m.status);
      if (seen.length === 1) whileOpen?.();
      if (seen.length === n) {
        stream.cancel();
        resolve(seen);
      }
    });
    stream.on("error", (err: grpc.ServiceError) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

/** grpc.health.v1.Health on the controller's gRPC listener, through a plain @grpc/grpc-js client without a token. */
describe.skipIf(!natsAvailable())("the gRPC health service", () => {
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  let nats: NatsServer;
  let controller: ControllerHandle;
  let health: Client;

  beforeAll(async () => {
    tmp = await makeTempDir("stowage-health-");
    nats = await startNats({ dir: join(tmp.path, "nats") });
    controller = await startController(
      loadControllerConfig(
        {},
        {
          dataDir: join(tmp.path, "db"),
          natsUrl: nats.url,
          grpcListen: "127.0.0.1:0",
          metricsListen: "127.0.0.1:0",
          logLevel: "silent",
          // Tokens are configured: health still needs none.
          apiTokens: "ops:admin:s3cret-token-value",
        },
      ),
    );
    const def = protoLoader.loadSync(["grpc/health/v1/health.proto"], {
      includeDirs: [join(ROOT, "proto")],
      enums: String,
      defaults: true,
    });
    // biome-ignore lint/suspicious/noExplicitAny: see Client
    const pkg = grpc.loadPackageDefinition(def) as any;
    health = new pkg.grpc.health.v1.Health(
      `127.0.0.1:${controller.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
  }, 120_000);
  afterAll(async () => {
    health?.close();
    // The database was closed by the last test: stopping closes it again.
    await controller?.stop().catch(() => {});
    await nats?.stop();
    await tmp?.cleanup();
  });

  it("answers SERVING for the whole server and for each API service, without a token", async () => {
    expect(await check(health, "")).toBe("SERVING");
    expect(await check(health, "stowage.v1.VolumeService")).toBe("SERVING");
    expect(await check(health, "stowage.v1.HostService")).toBe("SERVING");
    expect(await check(health, "grpc.health.v1.Health")).toBe("SERVING");
  });

  it("answers NOT_FOUND for a service it does not serve, and Watch says SERVICE_UNKNOWN", async () => {
    await expect(check(health, "stowage.v1.NoSuchService")).rejects.toMatchObject({
      code: grpc.status.NOT_FOUND,
    });
    expect(await watch(health, "stowage.v1.NoSuchService", 1)).toEqual(["SERVICE_UNKNOWN"]);
  });

  it("still asks for a token on the API beside it", async () => {
    const def = protoLoader.loadSync(["stowage/v1/host.proto"], { includeDirs: [join(ROOT, "proto")] });
    // biome-ignore lint/suspicious/noExplicitAny: see Client
    const pkg = grpc.loadPackageDefinition(def) as any;
    const hosts = new pkg.stowage.v1.HostService(
      `127.0.0.1:${controller.grpcPort}`,
      grpc.credentials.createInsecure(),
    );
    try {
      await expect(
        new Promise((resolve, reject) =>
          hosts.ListHosts({}, (e: unknown, r: unknown) => (e ? reject(e) : resolve(r))),
        ),
      ).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    } finally {
      hosts.close();
    }
  });

  it("goes NOT_SERVING when the database is closed, and Watch sends the change", async () => {
    const seen = await watch(health, "", 2, () => void controller.context.db.close());
    expect(seen).toEqual(["SERVING", "NOT_SERVING"]);
    expect(await check(health, "")).toBe("NOT_SERVING");
    expect(await check(health, "stowage.v1.VolumeService")).toBe("NOT_SERVING");
  });
});
