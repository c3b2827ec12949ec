import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { NAME_PATTERN } from "@stowage/core";
import { z } from "zod";

const name = z.string().regex(NAME_PATTERN, "use 1-63 characters of a-z, 0-9, '.', '_' and '-'");

const qcow2Defaults = z
  .object({
    clusterSize: z.number().int().optional(),
    preallocation: z.enum(["off", "metadata", "falloc", "full"]).optional(),
    lazyRefcounts: z.boolean().optional(),
    compressionType: z.enum(["zlib", "zstd"]).optional(),
    extendedL2: z.boolean().optional(),
  })
  .strict();

const DirPool = z
  .object({
    name,
    kind: z.literal("dir"),
    /** The directory volumes are made in; created if missing. */
    path: z.string().startsWith("/", "pool paths must be absolute"),
    /** Overrides the NUMA node read from sysfs for the backing device. */
    numaNode: z.number().int().min(0).optional(),
    labels: z.record(z.string(), z.string()).default({}),
    /** Provisioned bytes may reach size x ratio (default 1: sparse files are still counted at full size). */
    overcommitRatio: z.number().positive().optional(),
    /** Percentage of the pool kept out of reach of new volumes (headroom for growth and snapshots). */
    reservedPercent: z.number().min(0).max(99).default(0),
    /** At most this many volumes in the pool (0: no limit). */
    maxVolumes: z.number().int().min(0).default(0),
    /** Thin pools: no new volumes once physical use is above this percentage. */
    maxUsedPercent: z.number().min(1).max(100).default(90),
    qcow2: qcow2Defaults.default({}),
  })
  .strict();

/** The agent's one config: who the host is, where the controller and NATS are, and its pools. */
export const AgentConfigSchema = z
  .object({
    /** The host's name in the cluster (defaults to the machine's hostname). */
    hostName: name.default(() =>
      hostname()
        .toLowerCase()
        .replace(/[^a-z0-9._-]/g, "-")
        .slice(0, 63),
    ),
    zone: z.string().default(""),
    labels: z.record(z.string(), z.string()).default({}),
    controllerUrl: z.string().url().default("http://127.0.0.1:7480"),
    natsUrl: z.string().default("nats://127.0.0.1:4222"),
    natsUser: z.string().optional(),
    natsPass: z.string().optional(),
    /** Where NUMA topology is read from; tests point this at a fake tree. */
    sysfsRoot: z.string().default("/sys"),
    procRoot: z.string().default("/proc"),
    metricsListen: z.string().default("127.0.0.1:7482"),
    /** A full inventory is published this often, and after every operation. */
    inventoryIntervalMs: z.number().int().min(200).default(15_000),
    toolTimeoutMs: z
      .number()
      .int()
      .min(100)
      .default(10 * 60_000),
    initiatorName: z.string().default(""),
    pools: z.array(DirPool).min(1, "an agent needs at least one pool"),
    logLevel: z.string().default("info"),
  })
  .strict()
  .superRefine((c, ctx) => {
    const seen = new Set<string>();
    for (const p of c.pools) {
      if (seen.has(p.name))
        ctx.addIssue({ code: "custom", message: `pool name ${p.name} is used twice`, path: ["pools"] });
      seen.add(p.name);
    }
  });

export type AgentConfig = z.infer<typeof AgentConfigSchema>;
export type PoolConfig = AgentConfig["pools"][number];

/** Reads the config from a JSON file (STOWAGE_AGENT_CONFIG or --config), with a message that says what is wrong. */
export function loadAgentConfig(path: string, overrides: Partial<AgentConfig> = {}): AgentConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new Error(`cannot read agent config ${path}: ${(err as Error).message}`);
  }
  return parseAgentConfig({ ...(raw as object), ...overrides }, path);
}

export function parseAgentConfig(raw: unknown, source = "config"): AgentConfig {
  const parsed = AgentConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".") || "(root)"}: ${i.message}`);
    throw new Error(`invalid agent config ${source}:\n${lines.join("\n")}`);
  }
  return parsed.data;
}
