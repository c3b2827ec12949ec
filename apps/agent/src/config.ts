import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { AGENT_MAX_ACK_PENDING } from "@stowage/bus";
import { NAME_PATTERN } from "@stowage/core";
import { DEFAULT_MAX_CHAIN_DEPTH, parseNetfsUrl } from "@stowage/drivers";
import { z } from "zod";

/**
 * Every agent setting is declared once, here: its JSON name, its default (the schema's) and its description
 * (the meta below). `parseAgentConfig` and `--help` both derive from these schemas
 * (docs/operating.md#agent-config).
 */
function setting<T extends z.ZodType>(schema: T, description: string, unset?: string): T {
  return schema.meta(unset === undefined ? { description } : { description, unset });
}

const name = z.string().regex(NAME_PATTERN, "use 1-63 characters of a-z, 0-9, '.', '_' and '-'");

const QEMU_DEFAULT = "qemu-img's default";

const qcow2Defaults = z
  .object({
    clusterSize: setting(
      z.number().int().optional(),
      "qcow2 cluster size in bytes",
      `${QEMU_DEFAULT}, 65536`,
    ),
    preallocation: setting(
      z.enum(["off", "metadata", "falloc", "full"]).optional(),
      "qcow2 preallocation",
      `${QEMU_DEFAULT}, off`,
    ),
    lazyRefcounts: setting(z.boolean().optional(), "qcow2 lazy_refcounts", `${QEMU_DEFAULT}, false`),
    compressionType: setting(
      z.enum(["zlib", "zstd"]).optional(),
      "qcow2 compression_type",
      `${QEMU_DEFAULT}, zlib`,
    ),
    extendedL2: setting(z.boolean().optional(), "qcow2 extended_l2 (subclusters)", `${QEMU_DEFAULT}, false`),
  })
  .strict();

/** Settings every pool kind shares: identity, NUMA, labels and placement policy. */
const poolCommon = {
  name: setting(name, "the pool's name, unique on this host"),
  numaNode: setting(
    z.number().int().min(0).optional(),
    "the pool's NUMA node",
    "dir: read from sysfs for the backing device; lvm and lvmthin: for the volume group's physical volumes, when they share one; rbd: none",
  ),
  labels: setting(z.record(z.string(), z.string()).default({}), "labels for placement selectors"),
  overcommitRatio: setting(
    z.number().positive().optional(),
    "provisioned bytes may reach size x ratio",
    "1 for dir and lvm, the controller's STOWAGE_THIN_OVERCOMMIT_RATIO for lvmthin and rbd",
  ),
  reservedPercent: setting(
    z.number().min(0).max(99).default(0),
    "percentage of the pool kept out of reach of new volumes (headroom for growth and snapshots)",
  ),
  maxVolumes: setting(
    z.number().int().min(0).default(0),
    "at most this many volumes in the pool (0: no limit)",
  ),
  maxUsedPercent: setting(
    z.number().min(1).max(100).default(90),
    "thin pools: no new volumes once physical use is above this percentage",
  ),
};

const DirPool = z
  .object({
    ...poolCommon,
    kind: z.literal("dir"),
    path: setting(
      z.string().startsWith("/", "pool paths must be absolute"),
      "the directory volumes are made in (absolute; created if missing)",
    ),
    qcow2: setting(qcow2Defaults.default({}), "options of new qcow2 images"),
    maxChainDepth: setting(
      z.number().int().min(1).max(64).optional(),
      "clones deeper than this many backing files are flattened",
      String(DEFAULT_MAX_CHAIN_DEPTH),
    ),
  })
  .strict();

/**
 * An NFS export reached without the kernel client (qemu's nfs:// driver, NFSv3 through the portmapper).
 * The URL is kept in its canonical form (lower-case host, no trailing slash): it is the share's identity,
 * the same on every host that configures it.
 */
const NetfsPool = z
  .object({
    ...poolCommon,
    kind: z.literal("netfs"),
    url: setting(
      z
        .string()
        .superRefine((v, ctx) => {
          try {
            parseNetfsUrl(v);
          } catch (e) {
            ctx.addIssue({ code: "custom", message: (e as Error).message });
          }
        })
        .transform((v) => parseNetfsUrl(v).url),
      "the NFS export, nfs://server/path (a host name or IPv4 address and an absolute path; no user, port or query)",
    ),
    qcow2: setting(qcow2Defaults.default({}), "options of new qcow2 images"),
    maxChainDepth: setting(
      z.number().int().min(1).max(64).optional(),
      "clones deeper than this many backing files are flattened",
      String(DEFAULT_MAX_CHAIN_DEPTH),
    ),
  })
  .strict();

/** Hosts without udevd (containers, minimal installs) need LVM to manage device nodes itself. */
const lvmCommon = {
  vg: setting(
    z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,126}$/, "a volume group name"),
    "the volume group (it must exist)",
  ),
  udev: setting(
    z.boolean().default(true),
    "false on hosts without udevd: LVM then makes device nodes itself",
  ),
};

const LvmPool = z.object({ ...poolCommon, ...lvmCommon, kind: z.literal("lvm") }).strict();
const LvmThinPool = z
  .object({
    ...poolCommon,
    ...lvmCommon,
    kind: z.literal("lvmthin"),
    thinPool: setting(
      z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,126}$/, "a logical volume name"),
      "the thin pool LV inside the volume group (it must exist)",
    ),
  })
  .strict();

const RbdPool = z
  .object({
    ...poolCommon,
    kind: z.literal("rbd"),
    cephPool: setting(
      z.string().regex(/^[A-Za-z0-9_.-]{1,128}$/, "a Ceph pool name"),
      "the Ceph pool holding the images (it must exist)",
    ),
    namespace: setting(
      z
        .string()
        .regex(/^[A-Za-z0-9_.-]{1,128}$/)
        .optional(),
      "RBD namespace inside the Ceph pool",
      "none",
    ),
    cephConf: setting(
      z.string().startsWith("/").optional(),
      "ceph.conf path",
      "rbd's default, /etc/ceph/ceph.conf",
    ),
    cephUser: setting(
      z
        .string()
        .regex(/^[A-Za-z0-9_.-]{1,64}$/)
        .optional(),
      'Ceph user id, without "client."',
      "rbd's default, admin",
    ),
    keyring: setting(z.string().startsWith("/").optional(), "keyring path", "rbd's default search path"),
  })
  .strict();

const Pool = z.discriminatedUnion("kind", [DirPool, LvmPool, LvmThinPool, NetfsPool, RbdPool]);

/** The agent's one config: who the host is, where the controller and NATS are, and its pools. */
export const AgentConfigSchema = z
  .object({
    hostName: setting(
      name.default(() =>
        hostname()
          .toLowerCase()
          .replace(/[^a-z0-9._-]/g, "-")
          .slice(0, 63),
      ),
      "the host's name in the cluster (default: this machine's hostname, lowercased, other characters as '-')",
    ),
    zone: setting(
      z.string().default(""),
      "the host's zone (a name), for zone selectors and anti-affinity by zone",
    ),
    labels: setting(
      z.record(z.string(), z.string()).default({}),
      "labels of the host, stored with it (placement selects on pool labels)",
    ),
    controllerUrl: setting(
      z.string().url().default("http://127.0.0.1:7480"),
      "the controller's gRPC address; https:// is the secure mode: the host joins with a token, then uses its certificate",
    ),
    natsUrl: setting(z.string().default("nats://127.0.0.1:4222"), "NATS server with JetStream"),
    natsUser: setting(z.string().optional(), "NATS user name", "no NATS auth"),
    natsPass: setting(z.string().optional(), "NATS password", "none"),
    stateDir: setting(
      z.string().startsWith("/", "stateDir must be absolute").default("/var/lib/stowage/agent"),
      "secure mode: where the host's key, certificate, CA and NATS credentials are kept (directory 0700, files 0600)",
    ),
    caFile: setting(
      z.string().optional(),
      "secure mode: PEM of the cluster CA, trusted for the first join (`stowage-controller ca-cert` prints it); afterwards the CA in stateDir is used",
      "none: the first join needs it",
    ),
    joinTokenFile: setting(
      z.string().optional(),
      "secure mode: a file holding the one-time join token (`stowctl token create --host NAME`), read only when the host has no valid certificate; it may be deleted once joined",
      "the token in STOWAGE_JOIN_TOKEN",
    ),
    natsTls: setting(
      z.enum(["auto", "on", "off"]).default("auto"),
      "TLS to NATS, trusting the cluster CA: auto is on when controllerUrl is https",
    ),
    sysfsRoot: setting(
      z.string().default("/sys"),
      "where NUMA topology is read from (tests use a fake tree)",
    ),
    procRoot: setting(z.string().default("/proc"), "where memory and CPU counts are read from"),
    metricsListen: setting(
      z.string().default("127.0.0.1:7482"),
      "address of the agent's /metrics and /healthz",
    ),
    inventoryIntervalMs: setting(
      z
        .number()
        .int()
        .min(200)
        .default(5 * 60_000),
      "a full inventory (every volume of every pool) is published this often (ms), besides on reconnect and on the controller's request; after an operation only a delta is",
    ),
    poolConcurrency: setting(
      z.number().int().min(1).max(AGENT_MAX_ACK_PENDING).default(4),
      "operations running at once in one pool (always one at a time per volume)",
    ),
    maxConcurrency: setting(
      z.number().int().min(1).max(AGENT_MAX_ACK_PENDING).default(16),
      "commands the agent holds at once, running or waiting for their volume's or pool's turn; it fetches no more",
    ),
    shutdownGraceMs: setting(
      z.number().int().min(0).max(60_000).default(5000),
      "on SIGTERM, how long running operations may finish (ms); commands not started are handed back at once",
    ),
    toolTimeoutMs: setting(
      z
        .number()
        .int()
        .min(100)
        .default(10 * 60_000),
      "default timeout of one tool run (qemu-img, lvm, rbd; ms)",
    ),
    initiatorName: setting(
      z.string().default(""),
      "the host's iSCSI initiator name, reported to the controller",
    ),
    iscsiPortal: setting(
      z
        .string()
        .regex(
          /^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):\d{1,5}$/,
          "use ip:port, for example 203.0.113.11:3260",
        )
        .optional(),
      "iSCSI exports: the address:port the host's tgtd serves initiators on (the URI clients get)",
      "none: this host serves no iSCSI exports",
    ),
    tgtControlPort: setting(
      z.number().int().min(0).max(32767).default(0),
      "tgtd's control port (`tgtd -C N`; the host's tgt service uses 0)",
    ),
    pools: setting(
      z.array(Pool).min(1, "an agent needs at least one pool"),
      "the host's pools (at least one), each of one kind below",
    ),
    logLevel: setting(z.string().default("info"), "debug, info, warn or error"),
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

/** An https controller URL is the secure mode: join, certificates, mTLS and NATS credentials (identity.ts). */
export function secureMode(config: Pick<AgentConfig, "controllerUrl">): boolean {
  return new URL(config.controllerUrl).protocol === "https:";
}

/** Whether the agent's NATS connection uses TLS (trusting the cluster CA). */
export function natsTlsEnabled(config: Pick<AgentConfig, "controllerUrl" | "natsTls">): boolean {
  return config.natsTls === "on" || (config.natsTls === "auto" && secureMode(config));
}

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

/** A field of the JSON Schema zod derives from the schemas above (with our meta: description, unset). */
interface JsonField {
  type?: string;
  enum?: unknown[];
  const?: unknown;
  default?: unknown;
  description?: string;
  unset?: string;
  properties?: Record<string, JsonField>;
  required?: string[];
  items?: JsonField;
  oneOf?: JsonField[];
}

/** One row of `--help`: a field's JSON path, its type, its default ("required" if it has none) and its meaning. */
export interface AgentSettingHelp {
  path: string;
  type: string;
  default: string;
  description: string;
}

export interface AgentSettings {
  host: AgentSettingHelp[];
  /** The fields every pool has, whatever its kind. */
  pool: AgentSettingHelp[];
  /** Each kind's own fields, by kind. */
  kinds: Record<string, AgentSettingHelp[]>;
}

const REQUIRED = "required";

function typeName(f: JsonField): string {
  if (f.const !== undefined) return JSON.stringify(f.const);
  if (f.enum) return f.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (f.type === "object" && !f.properties) return "object of strings";
  return f.type ?? "any";
}

/** The rows of an object's fields (nested objects flattened as "a.b"), keeping those `keep` accepts. */
function fieldRows(object: JsonField, keep: (key: string) => boolean, prefix = ""): AgentSettingHelp[] {
  const required = new Set(object.required ?? []);
  return Object.entries(object.properties ?? {})
    .filter(([key]) => keep(key))
    .flatMap(([key, f]) => {
      const path = `${prefix}${key}`;
      if (f.type === "object" && f.properties) return fieldRows(f, () => true, `${path}.`);
      const fallback = required.has(key)
        ? REQUIRED
        : f.default !== undefined
          ? JSON.stringify(f.default)
          : `unset (${f.unset ?? "none"})`;
      return [{ path, type: typeName(f), default: fallback, description: f.description ?? "" }];
    });
}

/** The settings of the agent's JSON config, read back from the schemas above through JSON Schema. */
export function agentSettings(): AgentSettings {
  const json = z.toJSONSchema(AgentConfigSchema, { io: "input", unrepresentable: "any" }) as JsonField;
  const kinds = json.properties?.pools?.items?.oneOf ?? [];
  const shared = (key: string) => key in poolCommon;
  const kindRow: AgentSettingHelp = {
    path: "kind",
    type: kinds.map((k) => typeName(k.properties?.kind ?? {})).join(" | "),
    default: REQUIRED,
    description: "the pool's kind: one of the sections below",
  };
  return {
    host: fieldRows(json, () => true),
    pool: [...fieldRows(kinds[0] ?? {}, shared), kindRow],
    kinds: Object.fromEntries(
      kinds.map((k) => [
        String(k.properties?.kind?.const),
        fieldRows(k, (key) => !shared(key) && key !== "kind"),
      ]),
    ),
  };
}

function helpSection(title: string, rows: AgentSettingHelp[]): string {
  const width = Math.max(...rows.map((r) => r.path.length)) + 2;
  const lines = rows.map((r) => {
    const fallback = r.default === REQUIRED ? REQUIRED : `default: ${r.default}`;
    return `  ${r.path.padEnd(width)}${r.description}\n  ${" ".repeat(width)}${r.type}, ${fallback}`;
  });
  return `${title}\n${lines.join("\n")}`;
}
/** The text of `stowage-agent --help`: every setting of the config with its default. */
export function agentHelp(): string {
  const { host, pool, kinds } = agentSettings();
  const sections = [
    helpSection("Host settings (top level):", host),
    helpSection('Every pool (entries of "pools"):', pool),
    ...Object.entries(kinds).map(([kind, rows]) => helpSection(`Pools of kind "${kind}" also have:`, rows)),
  ];
  return `stowage-agent: runs Stowage operations on this host.

Usage: stowage-agent --config /etc/stowage/agent.json
       (or STOWAGE_AGENT_CONFIG=/etc/stowage/agent.json stowage-agent)

With an https:// controllerUrl (secure mode) the first start joins the cluster with a one-time token from
\`stowctl token create --host NAME\`, given in STOWAGE_JOIN_TOKEN or a file named by joinTokenFile, and caFile;
later starts use the certificate kept in stateDir.

The config is one JSON object; unknown fields are refused. A minimal one:
  { "hostName": "node1", "pools": [ { "name": "default", "kind": "dir", "path": "/var/lib/stowage/pools/default" } ] }

${sections.join("\n\n")}

See docs/operating.md (agent config) and deploy/examples/agent.json.
`;
}
