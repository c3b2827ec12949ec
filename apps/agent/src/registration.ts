import { setTimeout as sleep } from "node:timers/promises";
import type { RegisterAgentResponse } from "@stowage/proto";
import type { Logger } from "@stowage/telemetry";

/** Registration is idempotent; repeating it heals a controller that lost its database. */
const REREGISTER_INTERVAL_MS = 60_000;

/**
 * What a refusal means, when a failure is one (secure mode: the controller refused this host's certificate);
 * it is logged as an error instead of a warning.
 */
export type Refusal = (err: unknown) => string | undefined;

/**
 * Registers with the controller, waiting for it as long as it takes: an agent may start first. Each failure is
 * logged with what to check (a refusal as one clear error), and the wait doubles up to 5 s.
 */
export async function registerWhenReachable(
  register: () => Promise<RegisterAgentResponse>,
  controllerUrl: string,
  log: Logger,
  refusal: Refusal = () => undefined,
): Promise<RegisterAgentResponse> {
  let delay = 250;
  for (;;) {
    try {
      return await register();
    } catch (err) {
      const fields = { err: (err as Error).message, controller: controllerUrl };
      const refused = refusal(err);
      if (refused) log.error(fields, refused);
      else log.warn(fields, "cannot register with the controller yet; retrying");
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }
}

/** Registers again every minute (a refusal is logged); returns what stops it. */
export function keepRegistered(
  register: () => Promise<unknown>,
  log?: Logger,
  refusal: Refusal = () => undefined,
): () => void {
  const timer = setInterval(
    () =>
      void register().catch((err) => {
        const refused = refusal(err);
        if (refused) log?.error({ err: (err as Error).message }, refused);
      }),
    REREGISTER_INTERVAL_MS,
  );
  return () => clearInterval(timer);
}
