import { pino } from "pino";

export type Logger = pino.Logger;

/** JSON logs on stderr; `level` from the app's config (STOWAGE_LOG_LEVEL). */
export function createLogger(name: string, level = process.env.STOWAGE_LOG_LEVEL ?? "info"): Logger {
  return pino({ name, level, base: { name, pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}
