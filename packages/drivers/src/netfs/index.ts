import { invalidArgument } from "@stowage/core";
import { createFilePoolDriver } from "../dir/index.js";
import { createFilePool, type DirDriverOptions } from "../dir/layout.js";
import type { PoolDriver } from "../driver.js";
import type { ToolRunner } from "../runner.js";
import { Nfs3Client } from "./nfs3.js";
import { createNfsPoolFs } from "./store.js";
import { type NetfsShare, parseNetfsUrl } from "./url.js";

export { Nfs3Client, NfsError } from "./nfs3.js";
export { type NetfsShare, parseNetfsUrl } from "./url.js";

/**
 * `netfs` pools: a dir pool's layout (dir/layout.ts: `<volumeId>.<qcow2|raw>` images, `.stowage/` records,
 * temp and trash names, base images for linked clones) on an NFS export, for hosts without the kernel NFS
 * client. Image data goes through qemu's own `nfs://` driver (libnfs, NFSv3); the metadata (listing, records,
 * renames, removals, capacity from FSSTAT) through the TypeScript NFSv3 client in this directory. Every
 * image's path is its absolute URL, `nfs://server/path/<name>`, and so is the backing file of a linked
 * clone: qemu would resolve a relative one against the image's URL and fail to mount it.
 *
 * Several hosts may configure the same export: the pool is shared (PoolReport.shared, share = `url`), and
 * each host sees every volume. The driver's locks are per process; that two hosts never work on the same
 * volume at once is the controller's doing (one operation per volume).
 */
export interface NetfsDriverOptions extends Omit<DirDriverOptions, "root"> {
  /** The export, `nfs://server/path` (see parseNetfsUrl). */
  url: string;
  /** NFS and MOUNT ports for the driver's own client; absent: asked of the portmapper (port 111), as qemu does. */
  nfsPort?: number;
  mountPort?: number;
  /** Bound on each NFS call of the driver's own client. Default 15 s. */
  nfsTimeoutMs?: number;
}

/**
 * Where a netfs pool's files live in its layout: `/.stowage-netfs/<server><export>/...`, never a local path
 * (every file operation goes to the NFS client, every qemu-img argument is rewritten to the `nfs://` URL by
 * the runner below). The layout and qemu-img's argv builders work on absolute paths; the builders refuse
 * anything else, URLs included, so the driver hands them these and maps them at the last moment.
 */
export const NETFS_LAYOUT_ROOT = "/.stowage-netfs";

/**
 * qemu-img arguments: layout paths become the images' URLs, and `--image-opts` on a local file (internal
 * snapshots) opens it through qemu's nfs driver instead (server, and the path on the server).
 */
export function netfsToolArgv(argv: readonly string[], layoutRoot: string, share: NetfsShare): string[] {
  const prefix = `${layoutRoot}/`;
  const rest = (p: string) => (p === layoutRoot ? "" : `/${p.slice(prefix.length)}`);
  return argv.map((a) => {
    if (a === layoutRoot || a.startsWith(prefix)) return `${share.url}${rest(a)}`;
    const m = /^(.*)file\.driver=file,file\.filename=(.*)$/.exec(a);
    if (m?.[2] !== undefined) {
      const path = m[2].replaceAll(",,", ",");
      if (path === layoutRoot || path.startsWith(prefix)) {
        const onServer = `${share.exportPath}${rest(path)}`.replaceAll(",", ",,");
        return `${m[1]}file.driver=nfs,file.server.type=inet,file.server.host=${share.host},file.path=${onServer}`;
      }
    }
    return a;
  });
}

export function createNetfsDriver(opts: NetfsDriverOptions): PoolDriver {
  const share = parseNetfsUrl(opts.url);
  for (const [k, v] of [
    ["nfsPort", opts.nfsPort],
    ["mountPort", opts.mountPort],
  ] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1 || v > 65535)) {
      throw invalidArgument(`netfs pool ${opts.poolName}: ${k} ${v} is not a port`);
    }
  }
  const client = new Nfs3Client({
    host: share.host,
    exportPath: share.exportPath,
    ...(opts.nfsPort !== undefined ? { nfsPort: opts.nfsPort } : {}),
    ...(opts.mountPort !== undefined ? { mountPort: opts.mountPort } : {}),
    ...(opts.nfsTimeoutMs !== undefined ? { timeoutMs: opts.nfsTimeoutMs } : {}),
  });
  const layoutRoot = `${NETFS_LAYOUT_ROOT}/${share.host}${share.exportPath}`;
  const toUrl = (p: string) =>
    p === layoutRoot
      ? share.url
      : p.startsWith(`${layoutRoot}/`)
        ? `${share.url}/${p.slice(layoutRoot.length + 1)}`
        : p;
  const runner: ToolRunner = {
    run: (tool, argv, runOpts) => opts.runner.run(tool, netfsToolArgv(argv, layoutRoot, share), runOpts),
  };
  const pool = createFilePool(
    { ...opts, runner, root: layoutRoot },
    {
      label: "netfs",
      root: layoutRoot,
      fs: createNfsPoolFs(client, layoutRoot, share.url),
      join: (dir, name) => `${dir}/${name}`,
      // qemu reports backing files as stored: absolute URLs on the share (a relative one, which netfs never
      // writes, is taken relative to the share's root).
      resolveBacking: (name) => {
        if (name.startsWith(`${share.url}/`)) return `${layoutRoot}/${name.slice(share.url.length + 1)}`;
        if (name.startsWith("nfs://") || name.startsWith("/")) return name;
        return `${layoutRoot}/${name}`;
      },
      artifactPath: toUrl,
    },
  );
  return createFilePoolDriver("netfs", pool);
}
