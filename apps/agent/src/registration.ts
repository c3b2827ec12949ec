import { setTimeout as sleep } from "node:timers/promises";
import type { RegisterAgentResponse } from "@stowage/proto";
import type { Logger } from "@stowage/telemetry";

/** Registration is idempotent; repeating it heals a controller that lost its database. */
const REREGISTER_INTERVAL_MS = 60_000;

/**
 * Registers with the controller, waiting for it as long as it takes: an agent may start first. Each failure is
 * logged with what to check, and the wait doubles up to 5 s.
 */
export async function registerWhenReachable(
  register: () => Promise<RegisterAgentResponse>,
  controllerUrl: string,
  log: Logger,
): Promise<RegisterAgentResponse> {
  let delay = 250;
  for (;;) {
    try {
      return await register();
    } catch (err) {
      log.warn(
        { err: (err as Error).message, controller: controllerUrl },
        "cannot register with the controller yet; retrying",
      );
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }
}

/** Registers again every minute; returns what stops it. */
export function keepRegistered(register: () => Promise<unknown>): () => void {
  const timer = setInterval(() => void register().catch(() => {}), REREGISTER_INTERVAL_MS);
  return () => clearInterval(timer);
}
