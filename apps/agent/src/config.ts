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

/** Settings every pool kind shares: identity, NUMA, labels and placement policy. */
const poolCommon = {
  name,
  /** Overrides the NUMA node read from sysfs for the backing device. */
  numaNode: z.number().int().min(0).optional(),
  labels: z.record(z.string(), z.string()).default({}),
  /** Provisioned bytes may reach size x ratio (default 1 for thick kinds, the controller's default for thin ones). */
  overcommitRatio: z.number().positive().optional(),
  /** Percentage of the pool kept out of reach of new volumes (headroom for growth and snapshots). */
  reservedPercent: z.number().min(0).max(99).default(0),
  /** At most this many volumes in the pool (0: no limit). */
  maxVolumes: z.number().int().min(0).default(0),
  /** Thin pools: no new volumes once physical use is above this percentage. */
  maxUsedPercent: z.number().min(1).max(100).default(90),
};

const DirPool = z
  .object({
    ...poolCommon,
    kind: z.literal("dir"),
    /** The directory volumes are made in; created if missing. */
    path: z.string().startsWith("/", "pool paths must be absolute"),
    qcow2: qcow2Defaults.default({}),
    /** Clones deeper than this many backing files are flattened. */
    maxChainDepth: z.number().int().min(1).max(64).optional(),
  })
  .strict();

/** Hosts without udevd (containers, minimal installs) need LVM to manage device nodes itself. */
const lvmCommon = {
  /** The volume group; it must exist. */
  vg: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,126}$/, "a volume group name"),
  udev: z.boolean().default(true),
};

const LvmPool = z.object({ ...poolCommon, ...lvmCommon, kind: z.literal("lvm") }).strict();
const LvmThinPool = z
  .object({
    ...poolCommon,
    ...lvmCommon,
    kind: z.literal("lvmthin"),
    /** The thin pool LV inside the volume group. */
    thinPool: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,126}$/, "a logical volume name"),
  })
  .strict();

const RbdPool = z
  .object({
    ...poolCommon,
    kind: z.literal("rbd"),
    /** The Ceph pool holding the images. */
    cephPool: z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/, "a Ceph pool name"),
    namespace: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,128}$/)
      .optional(),
    cephConf: z.string().startsWith("/").optional(),
    cephUser: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,64}$/)
      .optional(),
    keyring: z.string().startsWith("/").optional(),
  })
  .strict();

const Pool = z.discriminatedUnion("kind", [DirPool, LvmPool, LvmThinPool, RbdPool]);

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
    pools: z.array(Pool).min(1, "an agent needs at least one pool"),
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
