import { create } from "@bufbuild/protobuf";
import {
  cephxUserFor,
  failedPrecondition,
  invalidArgument,
  notFound,
  type PoolKind,
  validateName,
} from "@stowage/core";
import {
  type DiskSpec,
  diskXml,
  type IscsiDiskSpec,
  iothreadPinXml,
  type NfsDiskSpec,
  type RbdDiskSpec,
} from "@stowage/libvirt";
import { type GetDiskXmlRequest, type GetDiskXmlResponse, GetDiskXmlResponseSchema } from "@stowage/proto";
import {
  exportsAllowing,
  getHost,
  getPool,
  type HostRow,
  type PoolRow,
  poolHosts,
  type VolumeRow,
} from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { resolveVolume } from "./volume-service.js";

/** The states in which a volume has a device or file a guest can use. */
const ATTACHABLE = new Set(["available", "resizing", "reverting"]);

/**
 * GetDiskXml (`stowctl volume xml VOL --host H`): the libvirt `<disk>` element with which host H attaches the
 * volume, built by @stowage/libvirt (an XML library; user text escaped). On the volume's own host: `type='file'`
 * for a dir volume, `type='block'` for an LVM volume (`cache='none' io='native'`, `discard='unmap'` when thin).
 * From another host, the network source of the live export that allows that host: `type='network'` iSCSI
 * (portal, IQN/LUN, the host's initiator name, CHAP by secret usage) or RBD (monitors, the host's own cephx user
 * by secret usage). Without one, FAILED_PRECONDITION says how to make it. A netfs volume, on any host attached
 * to its share: `type='network'` NFS (the server, the export and the file). Nothing is written.
 */
export async function getDiskXml(
  ctx: ControllerContext,
  req: GetDiskXmlRequest,
): Promise<GetDiskXmlResponse> {
  if (!req.volume) throw invalidArgument("volume is empty: give a volume id or name", { field: "volume" });
  const targetDev = req.targetDev || "vdb";
  if (!/^vd[a-z]{1,3}$/.test(targetDev))
    throw invalidArgument(`target_dev ${JSON.stringify(targetDev)} is not a virtio disk name like vdb`, {
      field: "target_dev",
    });
  if (req.iothread > 1024) throw invalidArgument("iothread is at most 1024", { field: "iothread" });
  const volume = await resolveVolume(ctx.sql, req.volume);
  const hostId = req.hostId ? validateName("host_id", req.hostId) : volume.hostId;
  const host = await getHost(ctx.sql, hostId);
  if (!host)
    throw notFound(`host ${hostId} not found: list hosts with \`stowctl host list\``, { field: "host_id" });
  if (!ATTACHABLE.has(volume.state))
    throw failedPrecondition(
      `volume ${volume.name} is ${volume.state}: only a volume that exists can be attached`,
    );
  const pool = await getPool(ctx.sql, volume.poolId);
  if (!pool) throw failedPrecondition(`the pool ${volume.poolId} of volume ${volume.name} is gone`);
  const common = {
    target: { dev: targetDev, bus: "virtio" as const },
    serial: volume.id,
    alias: volume.name,
    ...(req.iothread > 0 ? { iothread: req.iothread } : {}),
  };
  const answer = (spec: DiskSpec) =>
    create(GetDiskXmlResponseSchema, {
      diskXml: diskXml(spec),
      iothreadPinXml: req.iothread > 0 && volume.cpuSet ? iothreadPinXml(req.iothread, volume.cpuSet) : "",
      cpuSet: volume.cpuSet,
    });
  if (hostId !== volume.hostId || pool.kind === "rbd" || pool.kind === "netfs") {
    if (pool.kind === "netfs") return answer({ ...(await netfsSpec(ctx, volume, pool, host)), ...common });
    return answer({ ...(await networkSpec(ctx, volume, pool.kind, host)), ...common });
  }
  if (!volume.hostPath)
    throw failedPrecondition(
      `volume ${volume.name} has no path on host ${volume.hostId} yet (its agent has not reported it)`,
    );
  const spec: DiskSpec =
    pool.kind === "dir"
      ? {
          kind: "file",
          path: volume.hostPath,
          format: volume.format === "qcow2" ? "qcow2" : "raw",
          ...common,
        }
      : { kind: "block", path: volume.hostPath, format: "raw", thin: pool.kind === "lvmthin", ...common };
  return answer(spec);
}

/**
 * A netfs volume on a host attached to its share (the pool's owner or an attached host, present): the NFS network
 * source qemu opens through libnfs, `nfs://server/export/<volume file>` split into the server, the export and
 * the file inside it.
 */
async function netfsSpec(
  ctx: ControllerContext,
  volume: VolumeRow,
  pool: PoolRow,
  host: HostRow,
): Promise<Omit<NfsDiskSpec, "target" | "serial" | "alias">> {
  const reaches = (await poolHosts(ctx.sql, pool.id)).some((h) => h.hostId === host.id && h.present);
  if (!reaches)
    throw failedPrecondition(
      `volume ${volume.name} is on netfs pool ${pool.id}, whose share host ${host.id} is not attached to: add the pool (url ${pool.share || "nfs://..."}) to its agent config`,
    );
  const share = /^nfs:\/\/([^/]+)(\/.*)$/.exec(pool.share);
  if (!share || !volume.hostPath.startsWith(`${pool.share}/`))
    throw failedPrecondition(
      `volume ${volume.name} has no file on share ${pool.share || "(none reported)"} yet (its agent has not reported it)`,
    );
  return {
    kind: "nfs",
    host: share[1]!,
    exportPath: share[2]!,
    file: volume.hostPath.slice(pool.share.length + 1),
    format: volume.format === "qcow2" ? "qcow2" : "raw",
  };
}

type NetworkSpec =
  | Omit<IscsiDiskSpec, "target" | "serial" | "alias">
  | Omit<RbdDiskSpec, "target" | "serial" | "alias">;

/**
 * How host `host` reaches a volume over the network: through the live export that allows it (the iSCSI target,
 * or its own cephx grant of an RBD image). The secrets stay out: the element names a libvirt secret by usage
 * (`stowage-<export id>`), which the attaching host defines with the value from GetExportCredentials.
 */
async function networkSpec(
  ctx: ControllerContext,
  volume: VolumeRow,
  poolKind: PoolKind,
  host: HostRow,
): Promise<NetworkSpec> {
  const exports = await exportsAllowing(ctx.sql, volume.id, host.id);
  const want = poolKind === "rbd" ? "rbd" : "iscsi";
  const e = exports.find((x) => x.kind === want && x.uri);
  if (!e) {
    if (poolKind === "netfs")
      throw failedPrecondition(
        `a netfs volume is reached through its share, which host ${host.id} is not attached to`,
      );
    throw failedPrecondition(
      `volume ${volume.name} lives on host ${volume.hostId}: no active ${want} export allows host ${host.id} (stowctl volume export ${volume.name}${want === "rbd" ? " --kind rbd" : ""} --allow ${host.id} --wait)`,
    );
  }
  const secretUsage = `stowage-${e.id}`;
  if (e.kind === "rbd") {
    const r = /^rbd:\/\/([^/]+)\/([^/]+)\/([^/]+)(?:\/([^/]+))?$/.exec(e.uri);
    if (!r) throw failedPrecondition(`export ${e.id} has an RBD URI this controller cannot read: ${e.uri}`);
    if (r[4] !== undefined)
      throw failedPrecondition(
        `volume ${volume.name} is in RBD namespace ${decodeURIComponent(r[3]!)}, which the <disk> element does not name yet: attach it with qemu's rbd driver directly`,
      );
    return {
      kind: "rbd",
      monitors: r[1]!.split(",").map((m) => hostPort(m, 3300)),
      pool: decodeURIComponent(r[2]!),
      image: decodeURIComponent(r[3]!),
      auth: { username: cephxUserFor(e.id, host.id), secretUsage },
    };
  }
  const m = /^iscsi:\/\/([^/]+)\/([^/]+)\/(\d+)$/.exec(e.uri);
  if (!m) throw failedPrecondition(`export ${e.id} has an iSCSI URI this controller cannot read: ${e.uri}`);
  if (!host.initiatorName)
    throw failedPrecondition(
      `host ${host.id} has reported no iSCSI initiator name: set initiatorName in its agent's config`,
    );
  return {
    kind: "iscsi",
    portal: hostPort(m[1]!, 3260),
    iqn: m[2]!,
    lun: Number(m[3]),
    initiatorIqn: host.initiatorName,
    format: volume.format === "qcow2" ? "qcow2" : "raw",
    ...(e.chapUser ? { chap: { username: e.chapUser, secretUsage } } : {}),
  };
}

/** "host:port", "[v6]:port" or a bare host, as libvirt's <host name port>. */
function hostPort(s: string, defaultPort: number): { host: string; port: number } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s);
  if (!m) throw failedPrecondition(`${JSON.stringify(s)} is not a host:port`);
  return { host: m[1]!, port: m[2] ? Number(m[2]) : defaultPort };
}
