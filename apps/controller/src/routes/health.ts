import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Health, HealthCheckResponse_ServingStatus as Status } from "@stowage/proto";
import { databaseAnswers } from "@stowage/store";
import type { ControllerContext } from "../context.js";

/** How long a readiness check waits for the database before it counts as not answering. */
const DATABASE_TIMEOUT_MS = 2_000;
/** How often a Watch re-checks readiness to send a change. */
export const HEALTH_WATCH_INTERVAL_MS = 1_000;

export interface Readiness {
  ok: boolean;
  detail: { database: boolean; nats: boolean };
}

/** What /readyz and the gRPC health service both answer: the database answers and the bus is connected. */
export async function readiness(ctx: Pick<ControllerContext, "sql" | "bus">): Promise<Readiness> {
  let timer: NodeJS.Timeout | undefined;
  const database = await Promise.race([
    databaseAnswers(ctx.sql),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), DATABASE_TIMEOUT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
  const nats = ctx.bus ? !ctx.bus.nc.isClosed() : false;
  return { ok: database && nats, detail: { database, nats } };
}

/**
 * grpc.health.v1.Health for load balancers: "" (the whole server) and each service the controller serves are
 * SERVING while the controller is ready, NOT_SERVING otherwise. No token is needed (auth.ts).
 */
export function healthRoutes(
  ctx: Pick<ControllerContext, "sql" | "bus">,
  services: readonly string[],
): ServiceImpl<typeof Health> {
  const known = new Set(["", "grpc.health.v1.Health", ...services]);
  const status = async (service: string): Promise<Status> => {
    if (!known.has(service)) return Status.SERVICE_UNKNOWN;
    return (await readiness(ctx)).ok ? Status.SERVING : Status.NOT_SERVING;
  };
  return {
    async check(req) {
      const s = await status(req.service);
      if (s === Status.SERVICE_UNKNOWN)
        throw new ConnectError(`unknown service ${JSON.stringify(req.service.slice(0, 200))}`, Code.NotFound);
      return { status: s };
    },
    async *watch(req, hc) {
      let last: Status | undefined;
      while (!hc.signal.aborted) {
        const s = await status(req.service);
        if (s !== last) {
          last = s;
          yield { status: s };
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(done, HEALTH_WATCH_INTERVAL_MS);
          function done() {
            clearTimeout(t);
            hc.signal.removeEventListener("abort", done);
            resolve();
          }
          hc.signal.addEventListener("abort", done, { once: true });
        });
      }
    },
  };
}
