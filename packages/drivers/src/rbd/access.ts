import { createHash } from "node:crypto";
import { invalidArgument, isCephxKey } from "@stowage/core";
import { z } from "zod";
import {
  type RbdConnection,
  rbdConnectionArgs,
  rbdInfoSchema,
  validateCephName,
  validateRbdConnection,
} from "../rbd.js";
import { parseJsonOutput, type ToolRunner } from "../runner.js";

/**
 * RBD access grants (issue 12): a host allowed to use an RBD export gets a cephx client of its own,
 * `client.<cephxUserFor(exportId, hostId)>`, with the key the controller generated for it and caps that reach
 * only the exported image. Every command runs with the pool's admin credentials (the rbd driver's conf, user
 * and keyring) through the one tool runner.
 *
 * The key never appears in an argv: the keyring (key and caps) is written to `ceph auth import -i -` on
 * stdin, so it is in no process list and no file on disk that a crash could leave behind; it is also passed as
 * a `secretArgs` value, so that an error quoting it would read `<redacted>`.
 *
 * Caps, found by test against Ceph 16.2 (librbd through `rbd` and qemu, exclusive-lock and object-map on):
 * - `mon 'profile rbd'` (the mon map, the OSD map, and the blocklisting an exclusive-lock takeover needs).
 * - On the image, `rwx` on `rbd_header.<id>` (its metadata, its lock and watch), `rbd_data.<id>.` (its
 *   data objects) and `rbd_object_map.<id>` (the object map and its snapshots' maps), `rx` on `rbd_id.<name>`
 *   (name to id).
 * - In the image's pool: `rx` on `rbd_info` (pool metadata, read on every open), `rbd_mirroring` (read by
 *   `rbd info`) and `rbd_directory` (id to name, read when a clone opens its parent, and by the CLI to assert
 *   a namespace).
 * - For a clone, `rx` on each ancestor's header, data and object map (in the ancestor's pool and namespace):
 *   the clone reads through to its parent, so image-level restriction still holds for clones and no fallback to
 *   `profile rbd pool=P` is needed. Caps are computed at grant time; a later flatten leaves the read caps on
 *   the former parent until the next grant (a create_export again).
 * - An image in a RADOS namespace: the clauses on its objects carry `namespace=NS`; `rbd_info` is read in the
 *   pool's default namespace, `rbd_mirroring` in both.
 * OSD caps match object names by prefix only: `rbd_header.<id>` also matches an image whose id extends this
 * one's (ids are a client instance id in hex followed by random hex), which needs both the same instance id
 * prefix and a random tail that continues it; data objects are matched with their trailing dot.
 *
 * Revoking (`ceph auth rm`) refuses every new connection with that key at once; a session already open (a
 * running VM) keeps its tickets until they expire (`auth service ticket ttl`, 1 h by default).
 */

/** How the admin commands reach the cluster: the rbd pool's own runner and connection. */
export interface CephAdmin {
  runner: ToolRunner;
  conn: RbdConnection;
}

/** One host's grant on one image. */
export interface RbdGrantSpec {
  /** The Ceph pool of the image. */
  pool: string;
  /** Its RADOS namespace, if any. */
  namespace?: string;
  image: string;
  /** The cephx client without `client.`: `cephxUserFor(exportId, hostId)`, so `stowage-` + ... */
  user: string;
  /** The client's key, in Ceph's format (`isCephxKey`). */
  key: string;
}

export interface RbdCaps {
  mon: string;
  osd: string;
}

export interface RbdGrant {
  user: string;
  caps: RbdCaps;
}

/** A Stowage cephx client as `ceph auth ls` shows it; the key only as a digest (`cephxKeyDigest`). */
export interface StowageCephxClient {
  user: string;
  keyDigest: string;
  caps: Record<string, string>;
}

/** Prefix of every cephx client Stowage makes (see `cephxUserFor` in @stowage/core). */
export const STOWAGE_CEPHX_PREFIX = "stowage-";
const STOWAGE_USER = /^stowage-[a-z0-9][a-z0-9_-]{0,127}$/;
const RBD_ID = /^[0-9a-f]{1,64}$/;
const TIMEOUT_MS = 30_000;

/** A short digest of a key, to compare keys without holding or showing them. */
export function cephxKeyDigest(key: string): string {
  return createHash("sha256").update(key).digest("hex").slice(0, 16);
}

function validateUser(user: string): string {
  if (typeof user !== "string" || !STOWAGE_USER.test(user)) {
    throw invalidArgument(
      `cephx user ${JSON.stringify(String(user).slice(0, 80))} is not a Stowage client: it must be "stowage-" followed by lowercase letters, digits, '_' and '-'`,
      { field: "user" },
    );
  }
  return user;
}

/** One image as the caps name it: where it is and its RBD id. */
export interface RbdImageRef {
  pool: string;
  namespace: string;
  /** The image's name, for `rbd_id.<name>`; absent for ancestors, which are opened by id. */
  name?: string;
  id: string;
}

/**
 * The caps for an image and its ancestors (`chain[0]` is the image itself, then its parent, ...). Pure: every
 * name was validated before it got here.
 */
export function rbdImageCaps(chain: readonly RbdImageRef[]): RbdCaps {
  const [image, ...ancestors] = chain;
  if (!image?.name) throw new Error("rbdImageCaps: the chain must start with the named image");
  const where = (r: { pool: string; namespace: string }) =>
    `pool=${r.pool}${r.namespace ? ` namespace=${r.namespace}` : ""}`;
  const clauses: string[] = [];
  const add = (c: string) => {
    if (!clauses.includes(c)) clauses.push(c);
  };
  add(`allow rwx ${where(image)} object_prefix rbd_header.${image.id}`);
  add(`allow rwx ${where(image)} object_prefix rbd_data.${image.id}.`);
  add(`allow rwx ${where(image)} object_prefix rbd_object_map.${image.id}`);
  add(`allow rx ${where(image)} object_prefix rbd_id.${image.name}`);
  for (const a of ancestors) {
    add(`allow rx ${where(a)} object_prefix rbd_header.${a.id}`);
    add(`allow rx ${where(a)} object_prefix rbd_data.${a.id}.`);
    add(`allow rx ${where(a)} object_prefix rbd_object_map.${a.id}`);
  }
  for (const r of chain) {
    const pool = { pool: r.pool, namespace: "" };
    add(`allow rx ${where(pool)} object_prefix rbd_info`);
    add(`allow rx ${where(pool)} object_prefix rbd_mirroring`);
    if (r.namespace) add(`allow rx ${where(r)} object_prefix rbd_mirroring`);
    add(`allow rx ${where(r)} object_prefix rbd_directory`);
  }
  return { mon: "profile rbd", osd: clauses.join(", ") };
}

/** Parents deeper than this are refused (the rbd driver's clones are a few levels deep at most). */
const MAX_CHAIN = 32;

const infoById = (c: RbdConnection, pool: string, namespace: string, id: string): string[] => [
  "info",
  "--format",
  "json",
  ...rbdConnectionArgs(c),
  "--pool",
  pool,
  ...(namespace ? ["--namespace", namespace] : []),
  "--image-id",
  id,
];

/** The image and its ancestors, read with `rbd info` (the first by name, the parents by id: one may be in the trash). */
export async function rbdImageChain(
  admin: CephAdmin,
  at: { pool: string; namespace?: string; image: string },
): Promise<RbdImageRef[]> {
  const conn = validateRbdConnection(admin.conn);
  const pool = validateCephName("ceph pool", at.pool);
  const namespace = at.namespace ? validateCephName("rbd namespace", at.namespace) : "";
  const image = validateCephName("rbd image", at.image);
  const chain: RbdImageRef[] = [];
  let argv = [
    "info",
    "--format",
    "json",
    ...rbdConnectionArgs(conn),
    `${pool}/${namespace ? `${namespace}/` : ""}${image}`,
  ];
  let here = { pool, namespace, name: image as string | undefined };
  for (;;) {
    const info = parseJsonOutput(
      "rbd",
      argv,
      (await admin.runner.run("rbd", argv, { timeoutMs: TIMEOUT_MS })).stdout,
      rbdInfoSchema,
    );
    if (!RBD_ID.test(info.id)) throw new Error(`rbd info ${argv.at(-1)}: unexpected image id ${info.id}`);
    chain.push({
      pool: here.pool,
      namespace: here.namespace,
      ...(here.name ? { name: here.name } : {}),
      id: info.id,
    });
    const p = info.parent;
    if (!p) return chain;
    if (chain.length >= MAX_CHAIN) throw new Error(`image ${image} has more than ${MAX_CHAIN} ancestors`);
    if (!p.id || !RBD_ID.test(p.id)) throw new Error(`rbd info ${argv.at(-1)}: the parent has no usable id`);
    const next = {
      pool: validateCephName("parent pool", p.pool),
      namespace: p.pool_namespace ? validateCephName("parent namespace", p.pool_namespace) : "",
      name: undefined,
    };
    argv = infoById(conn, next.pool, next.namespace, p.id);
    here = next;
  }
}

/**
 * Makes or converges `client.<user>`: its key and caps become exactly these (a repeated grant rewrites the
 * same entity, so it converges to one client with one key). Needs the image to exist.
 */
export async function grantRbdAccess(admin: CephAdmin, spec: RbdGrantSpec): Promise<RbdGrant> {
  const user = validateUser(spec.user);
  // The key is never quoted back, even in a refusal.
  if (!isCephxKey(spec.key))
    throw invalidArgument(`the cephx key for ${user} is not a valid key`, { field: "key" });
  const chain = await rbdImageChain(admin, spec);
  const caps = rbdImageCaps(chain);
  const keyring = `[client.${user}]\n\tkey = ${spec.key}\n\tcaps mon = "${caps.mon}"\n\tcaps osd = "${caps.osd}"\n`;
  await admin.runner.run("ceph", ["auth", "import", ...rbdConnectionArgs(admin.conn), "-i", "-"], {
    input: keyring,
    secretArgs: [spec.key],
    timeoutMs: TIMEOUT_MS,
  });
  return { user, caps };
}

/** Removes `client.<user>`; a client that is not there is already revoked. Says whether it was there. */
export async function revokeRbdAccess(admin: CephAdmin, user: string): Promise<{ existed: boolean }> {
  validateUser(user);
  const r = await admin.runner.run(
    "ceph",
    ["auth", "rm", ...rbdConnectionArgs(admin.conn), `client.${user}`],
    {
      timeoutMs: TIMEOUT_MS,
    },
  );
  return { existed: !/does not exist/.test(r.stderr) };
}

const authLsSchema = z.object({
  auth_dump: z.array(
    z.object({
      entity: z.string(),
      key: z.string(),
      caps: z.record(z.string(), z.string()).default({}),
    }),
  ),
});

/**
 * Every `client.stowage-*` entity, for convergence after a crash (a client of an export that is no longer
 * wanted is revoked; a missing one is granted again). One `ceph auth ls`, whatever the number of clients. Its
 * output holds every entity's key: only digests of Stowage's own leave this function.
 */
export async function listStowageCephxClients(admin: CephAdmin): Promise<StowageCephxClient[]> {
  const argv = ["auth", "ls", "--format", "json", ...rbdConnectionArgs(admin.conn)];
  const r = await admin.runner.run("ceph", argv, { timeoutMs: TIMEOUT_MS });
  let parsed: z.output<typeof authLsSchema>;
  try {
    parsed = authLsSchema.parse(JSON.parse(r.stdout));
  } catch {
    // Not parseJsonOutput: its error quotes the start of the output, which holds keys.
    throw new Error("ceph auth ls --format json printed output that is not the expected JSON");
  }
  return parsed.auth_dump
    .filter((e) => e.entity.startsWith(`client.${STOWAGE_CEPHX_PREFIX}`))
    .map((e) => ({ user: e.entity.slice("client.".length), keyDigest: cephxKeyDigest(e.key), caps: e.caps }))
    .sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0));
}

const monDumpSchema = z.object({
  mons: z.array(
    z.object({
      name: z.string(),
      public_addrs: z.object({
        addrvec: z.array(z.object({ type: z.string(), addr: z.string() })),
      }),
    }),
  ),
});

/** A mon address as `host:port` (`[v6]:port` for IPv6), nothing else. */
const MON_ADDR = /^(?:[0-9.]+|\[[0-9a-fA-F:.]+\]):[0-9]{1,5}$/;

/**
 * The monitors clients connect to, `host:port` each (msgr2 where the mon has it, else msgr1), from
 * `ceph mon dump`: what an `rbd://MON[,MON...]/POOL/IMAGE` URI and libvirt's `<host>` elements name.
 */
export async function cephMonitorAddresses(admin: CephAdmin): Promise<string[]> {
  const argv = ["mon", "dump", "--format", "json", ...rbdConnectionArgs(admin.conn)];
  const r = await admin.runner.run("ceph", argv, { timeoutMs: TIMEOUT_MS });
  const dump = parseJsonOutput("ceph", argv, r.stdout, monDumpSchema);
  const out: string[] = [];
  for (const m of dump.mons) {
    const vec = m.public_addrs.addrvec;
    const a = vec.find((x) => x.type === "v2") ?? vec.find((x) => x.type === "v1");
    if (a && MON_ADDR.test(a.addr)) out.push(a.addr);
  }
  if (out.length === 0) throw new Error("ceph mon dump names no monitor with a usable address");
  return out;
}
