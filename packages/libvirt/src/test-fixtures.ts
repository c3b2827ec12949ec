import type { BlockDiskSpec, FileDiskSpec, IscsiDiskSpec, NfsDiskSpec, RbdDiskSpec } from "./disk.js";

// Specs the tests share: one per kind, with the ids and addresses of the test fleet.

export const VOL = "vol-0190f1a2b3c47d8e9f00112233445566";

export const fileQcow2: FileDiskSpec = {
  kind: "file",
  path: "/var/lib/stowage/pools/dir1/vol-1.qcow2",
  format: "qcow2",
  target: { dev: "vdb", bus: "virtio" },
  serial: VOL,
  alias: "web-data",
};

export const blockThin: BlockDiskSpec = {
  kind: "block",
  path: "/dev/stowage-vg/vol-2",
  format: "raw",
  thin: true,
  target: { dev: "vdc", bus: "virtio" },
};

export const iscsiChap: IscsiDiskSpec = {
  kind: "iscsi",
  portal: { host: "203.0.113.11", port: 3260 },
  iqn: "iqn.2026-12.dev.stowage:exp-0190f1a2",
  lun: 1,
  initiatorIqn: "iqn.2026-12.dev.stowage:h2",
  chap: { username: "stowage-h2", secretUsage: "stowage-chap-exp-0190f1a2" },
  target: { dev: "vdd", bus: "virtio" },
};

export const rbdAuth: RbdDiskSpec = {
  kind: "rbd",
  pool: "stowage",
  image: "vol-0190f1a2",
  monitors: [
    { host: "203.0.113.31", port: 6789 },
    { host: "ceph-mon2.test", port: 3300 },
  ],
  auth: { username: "stowage-h2", secretUsage: "client.stowage-h2 secret" },
  target: { dev: "vde", bus: "virtio" },
};

export const nfsQcow2: NfsDiskSpec = {
  kind: "nfs",
  host: "203.0.113.21",
  port: 2049,
  exportPath: "/export/stowage",
  file: "netfs1/vol-3.qcow2",
  format: "qcow2",
  target: { dev: "vdf", bus: "virtio" },
};
