import { create } from "@bufbuild/protobuf";
import { failedPrecondition, invalidArgument, notFound, validateName } from "@stowage/core";
import { type DiskSpec, diskXml, iothreadPinXml } from "@stowage/libvirt";
import { type GetDiskXmlRequest, type GetDiskXmlResponse, GetDiskXmlResponseSchema } from "@stowage/proto";
import { getHost, getPool } from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { resolveVolume } from "./volume-service.js";

/** The states in which a volume has a device or file a guest can use. */
const ATTACHABLE = new Set(["available", "resizing", "reverting"]);

/**
 * GetDiskXml (`stowctl volume xml VOL --host H`): the libvirt `<disk>` element with which host H attaches the
 * volume, built by @stowage/libvirt (an XML library; user text escaped). On the volume's own host: `type='file'`
 * for a dir volume, `type='block'` for an LVM volume (`cache='none' io='native'`, `discard='unmap'` when thin).
 * From another host, or for kinds that attach over the network (rbd, netfs), it needs an export: not built yet,
 * refused with FAILED_PRECONDITION. Nothing is written.
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
  if (!(await getHost(ctx.sql, hostId)))
    throw notFound(`host ${hostId} not found: list hosts with \`stowctl host list\``, { field: "host_id" });
  if (!ATTACHABLE.has(volume.state))
    throw failedPrecondition(
      `volume ${volume.name} is ${volume.state}: only a volume that exists can be attached`,
    );
  const pool = await getPool(ctx.sql, volume.poolId);
  if (!pool) throw failedPrecondition(`the pool ${volume.poolId} of volume ${volume.name} is gone`);
  if (hostId !== volume.hostId || pool.kind === "rbd" || pool.kind === "netfs")
    throw failedPrecondition(
      hostId !== volume.hostId
        ? `volume ${volume.name} lives on host ${volume.hostId}: host ${hostId} can reach it only through an export, which is not built yet`
        : `a ${pool.kind} volume is attached over the network, through an export or access grant, which is not built yet`,
    );
  if (!volume.hostPath)
    throw failedPrecondition(
      `volume ${volume.name} has no path on host ${volume.hostId} yet (its agent has not reported it)`,
    );
  const common = {
    target: { dev: targetDev, bus: "virtio" as const },
    serial: volume.id,
    alias: volume.name,
    ...(req.iothread > 0 ? { iothread: req.iothread } : {}),
  };
  const spec: DiskSpec =
    pool.kind === "dir"
      ? {
          kind: "file",
          path: volume.hostPath,
          format: volume.format === "qcow2" ? "qcow2" : "raw",
          ...common,
        }
      : { kind: "block", path: volume.hostPath, format: "raw", thin: pool.kind === "lvmthin", ...common };
  return create(GetDiskXmlResponseSchema, {
    diskXml: diskXml(spec),
    iothreadPinXml: req.iothread > 0 && volume.cpuSet ? iothreadPinXml(req.iothread, volume.cpuSet) : "",
    cpuSet: volume.cpuSet,
  });
}
