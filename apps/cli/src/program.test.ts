import { once } from "node:events";
import { createServer } from "node:net";
import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type AdoptFindingRequest,
  AntiAffinityScope,
  CompressionType,
  type CreateVolumeRequest,
  type DeleteVolumeRequest,
  type ExplainPlacementRequest,
  FindingKind,
  type ListFindingsRequest,
  type ListOperationsRequest,
  type ListPoolsRequest,
  type ListVolumesRequest,
  PlacementStrategy,
  PoolKind,
  Preallocation,
  type QuarantineFindingRequest,
  type Volume,
  VolumeFormat,
  VolumeState,
  WatchVolumesResponseSchema,
  WipeMode,
} from "@stowage/proto";
import type { Command } from "commander";
import { afterEach, describe, expect, it } from "vitest";
import { createProgram } from "./program.js";
import {
  type FakeController,
  type FakeOverrides,
  ORPHAN_ID,
  startFakeController,
  VOLUMES,
  volume,
} from "./testing/fake-controller.js";
import { runStowctl } from "./testing/run.js";

const GiB = 1024n ** 3n;

let fake: FakeController | undefined;

afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

async function controller(overrides: FakeOverrides = {}): Promise<FakeController> {
  fake = await startFakeController(overrides);
  return fake;
}

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

async function stowctl(args: string[], env: Record<string, string | undefined> = {}): Promise<Result> {
  return runStowctl(args, { STOWAGE_SERVER: fake?.url, ...env });
}

/** The port of a socket that was just closed: nothing listens there. */
async function closedPort(): Promise<number> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, "close");
  return port;
}

const watchEvent = (v: Volume) => create(WatchVolumesResponseSchema, { type: 2, volume: v });

describe("host", () => {
  it("lists hosts as a table", async () => {
    await controller();
    const r = await stowctl(["host", "list"]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(
      /^NAME\s+STATE\s+SCHEDULABLE\s+ZONE\s+CPUS\s+MEMORY\s+NUMA\s+POOLS\s+VOLUMES\s+HEARTBEAT$/,
    );
    expect(lines[1]).toMatch(/^node1\s+up\s+yes\s+z1\s+8\s+64 GiB\s+2\s+2\s+2\s+3s ago$/);
    expect(lines[2]).toMatch(/^node2\s+down\s+no\s+z2\s+4\s+16 GiB\s+0\s+1\s+0\s+10m ago$/);
    // Columns are aligned: STATE starts at the same offset on every line.
    const col = lines[0]!.indexOf("STATE");
    expect(lines[1]!.slice(col, col + 2)).toBe("up");
    expect(lines[2]!.slice(col, col + 4)).toBe("down");
  });

  it("lists hosts as JSON with lowercase enums and bytes as strings", async () => {
    await controller();
    const r = await stowctl(["host", "list", "-o", "json"]);
    expect(r.code).toBe(0);
    const hosts = JSON.parse(r.stdout);
    expect(hosts).toHaveLength(2);
    expect(hosts[0]).toMatchObject({
      id: "node1",
      state: "up",
      memoryBytes: String(64n * GiB),
      schedulable: true,
      lastHeartbeatAt: "2025-01-01T11:59:57.000Z",
      labels: { rack: "r1" },
    });
    expect(hosts[0].numaNodes[1]).toMatchObject({ id: 1, cpuList: "4-7", memoryBytes: String(32n * GiB) });
  });

  it("gets a host with its NUMA nodes", async () => {
    await controller();
    const r = await stowctl(["host", "get", "node1"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Name:\s+node1$/m);
    expect(r.stdout).toMatch(/^State:\s+up$/m);
    expect(r.stdout).toMatch(/^Memory:\s+64 GiB$/m);
    expect(r.stdout).toMatch(/^\s+1\s+4-7\s+32 GiB\s+21 10$/m);
    expect(fake!.requests("getHost")).toEqual([expect.objectContaining({ hostId: "node1" })]);
  });

  it("maps NotFound to exit 3 with a hint", async () => {
    await controller();
    const r = await stowctl(["host", "get", "node9"]);
    expect(r.code).toBe(3);
    expect(r.stderr).toBe("error: host node9 not found: list them with `stowctl host list`\n");
    expect(r.stdout).toBe("");
  });
});

describe("pool", () => {
  it("lists pools as a table and sends the filters", async () => {
    await controller();
    const r = await stowctl(["pool", "list", "--host", "node1", "--kind", "lvmthin"]);
    expect(r.code).toBe(0);
    const req = fake!.requests<ListPoolsRequest>("listPools")[0]!;
    expect(req.hostId).toBe("node1");
    expect(req.kind).toBe(PoolKind.LVMTHIN);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(
      /^POOL\s+KIND\s+STATUS\s+NUMA\s+SIZE\s+FREE\s+PROVISIONED\s+RESERVED\s+VOLUMES$/,
    );
    expect(lines[1]).toMatch(/^node1\/thin\s+lvmthin\s+unhealthy\s+1\s+1 TiB\s+24 GiB\s+0 B\s+0 B\s+0$/);
  });

  it("lists pools as JSON", async () => {
    await controller();
    const r = await stowctl(["-o", "json", "pool", "list"]);
    expect(r.code).toBe(0);
    const pools = JSON.parse(r.stdout);
    expect(pools.map((p: { id: string }) => p.id)).toEqual(["node1/default", "node1/thin"]);
    expect(pools[0]).toMatchObject({
      kind: "dir",
      healthy: true,
      numaNode: 0,
      formats: ["qcow2", "raw"],
      capacity: { totalBytes: String(500n * GiB), freeBytes: String(400n * GiB) },
    });
    expect(pools[1].capacity.dataPercent).toBe(97.5);
  });

  it("shows wide columns with -o wide", async () => {
    await controller();
    const r = await stowctl(["pool", "list", "-o", "wide"]);
    expect(r.code).toBe(0);
    expect(r.stdout.split("\n")[0]).toMatch(/ZONE\s+OVERCOMMIT\s+FORMATS\s+SHARED\s+DATA%\s+LABELS$/);
    expect(r.stdout).toMatch(/node1\/thin .* 20x\s+raw\s+no\s+97\.5%\s+-$/m);
  });

  it("gets a pool", async () => {
    await controller();
    const r = await stowctl(["pool", "get", "node1/thin"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Status:\s+unhealthy: thin pool metadata 95% full$/m);
    expect(r.stdout).toMatch(/^Overcommit:\s+20x$/m);
    const json = await stowctl(["pool", "get", "node1/default", "-o", "json"]);
    expect(JSON.parse(json.stdout)).toMatchObject({ id: "node1/default", kind: "dir" });
  });

  it("refuses a pool id that is not HOST/POOL before calling the server", async () => {
    await controller();
    const r = await stowctl(["pool", "get", "default"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/write it as HOST\/POOL/);
    expect(fake!.calls).toEqual([]);
  });

  it("refuses an unknown pool kind", async () => {
    await controller();
    const r = await stowctl(["pool", "list", "--kind", "zfs"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/use one of dir, lvm, lvmthin, netfs, rbd/);
    expect(fake!.calls).toEqual([]);
  });
});

describe("volume get and list", () => {
  it("gets a volume as details", async () => {
    await controller();
    const r = await stowctl(["volume", "get", "vm1-disk0"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Name:\s+vm1-disk0$/m);
    expect(r.stdout).toMatch(/^State:\s+available$/m);
    expect(r.stdout).toMatch(/^Size:\s+10 GiB \(10737418240 bytes\)$/m);
    expect(r.stdout).toMatch(/^Format:\s+qcow2$/m);
    expect(r.stdout).toMatch(/^NUMA node:\s+0 \(CPUs 0-3\)$/m);
    expect(r.stdout).toMatch(/^Created:\s+2025-01-01T11:55:00.000Z \(5m ago\)$/m);
  });

  it("gets a volume as JSON", async () => {
    await controller();
    const r = await stowctl(["volume", "get", "vol-vm1-disk0", "--output", "json"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('"state": "available"');
    const v = JSON.parse(r.stdout);
    expect(v).toMatchObject({
      id: "vol-vm1-disk0",
      name: "vm1-disk0",
      sizeBytes: "10737418240",
      allocatedBytes: "196608",
      format: "qcow2",
      state: "available",
      poolId: "node1/default",
      numaNode: 0,
      labels: { app: "web" },
    });
    expect(JSON.stringify(v)).toContain('"state":"available","numaNode":0');
  });

  it("lists volumes as a table", async () => {
    await controller();
    const r = await stowctl(["volume", "list"]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^NAME\s+SIZE\s+FORMAT\s+STATE\s+POOL\s+NUMA\s+AGE$/);
    expect(lines[1]).toMatch(/^vm1-disk0\s+10 GiB\s+qcow2\s+available\s+node1\/default\s+0\s+5m ago$/);
    expect(lines[2]).toMatch(/^vm2-disk0\s+20 GiB\s+raw\s+creating\s+node1\/default\s+0\s+5m ago$/);
  });

  it("follows next_page_token to the end and sends the filters", async () => {
    const pages: Record<string, { volumes: Volume[]; nextPageToken: string }> = {
      "": { volumes: [volume({ name: "a1" }), volume({ name: "a2" })], nextPageToken: "p2" },
      p2: { volumes: [volume({ name: "a3" })], nextPageToken: "p3" },
      p3: { volumes: [volume({ name: "a4" })], nextPageToken: "" },
    };
    await controller({ volumes: { listVolumes: (req) => pages[req.pageToken]! } });
    const r = await stowctl([
      "volume",
      "list",
      "--pool",
      "node1/default",
      "--state",
      "available",
      "--prefix",
      "a",
      "--label",
      "app=web",
      "--label",
      "tier=db",
      "--all",
      "-o",
      "json",
    ]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).map((v: { name: string }) => v.name)).toEqual(["a1", "a2", "a3", "a4"]);
    const reqs = fake!.requests<ListVolumesRequest>("listVolumes");
    expect(reqs.map((q) => q.pageToken)).toEqual(["", "p2", "p3"]);
    expect(reqs[0]).toMatchObject({
      poolId: "node1/default",
      state: VolumeState.AVAILABLE,
      namePrefix: "a",
      labels: { app: "web", tier: "db" },
      showDeleted: true,
    });
  });

  it("stops when the server repeats a page token", async () => {
    await controller({ volumes: { listVolumes: () => ({ volumes: VOLUMES, nextPageToken: "same" }) } });
    const r = await stowctl(["volume", "list"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/page token "same" twice/);
  });

  it("says so on stderr when there are no volumes", async () => {
    await controller({ volumes: { listVolumes: () => ({ volumes: [] }) } });
    const r = await stowctl(["volume", "list"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(/No volumes found/);
  });
});

describe("volume create", () => {
  it("sends the size in bytes, format, qcow2 options, constraints, labels and the token", async () => {
    await controller();
    const r = await stowctl(
      [
        "volume",
        "create",
        "vm1-disk1",
        "--size",
        "10G",
        "--format",
        "qcow2",
        "--kind",
        "dir,netfs",
        "--kind",
        "lvmthin",
        "--host",
        "node1",
        "--zone",
        "z1",
        "--numa-host",
        "node1",
        "--numa-node",
        "1",
        "--numa-required",
        "--anti-affinity",
        "web",
        "--anti-affinity-scope",
        "zone",
        "--strategy",
        "binpack",
        "--pool-label",
        "ssd=true",
        "--label",
        "app=web",
        "--label",
        "tier=db",
        "--cluster-size",
        "64K",
        "--preallocation",
        "metadata",
        "--lazy-refcounts",
        "--compression",
        "zstd",
        "--request-id",
        "req-1",
      ],
      { STOWAGE_TOKEN: "s3cret" },
    );
    expect(r.stderr).toMatch(/operation op-vm1-disk1/);
    expect(r.code).toBe(0);
    const [req] = fake!.requests<CreateVolumeRequest>("createVolume");
    expect(req).toMatchObject({
      name: "vm1-disk1",
      sizeBytes: 10n * GiB,
      format: VolumeFormat.QCOW2,
      labels: { app: "web", tier: "db" },
      requestId: "req-1",
      dryRun: false,
      qcow2: {
        clusterSizeBytes: 65536n,
        preallocation: Preallocation.METADATA,
        lazyRefcounts: true,
        compressionType: CompressionType.ZSTD,
      },
      constraints: {
        poolKinds: [PoolKind.DIR, PoolKind.NETFS, PoolKind.LVMTHIN],
        hostId: "node1",
        zone: "z1",
        poolLabels: { ssd: "true" },
        numa: { hostId: "node1", numaNode: 1, required: true },
        antiAffinityGroup: "web",
        antiAffinityScope: AntiAffinityScope.ZONE,
        strategy: PlacementStrategy.BINPACK,
      },
    });
    expect(req!.qcow2!.extendedL2).toBeUndefined();
    expect(fake!.calls[0]!.authorization).toBe("Bearer s3cret");
    expect(r.stdout).toMatch(/^State:\s+creating$/m);
  });

  it("sends no qcow2 options and an unspecified format by default, decimal sizes as powers of 1000", async () => {
    await controller();
    const r = await stowctl(["volume", "create", "vm1-disk2", "--size", "1GB", "--pool", "node1/default"]);
    expect(r.code).toBe(0);
    const [req] = fake!.requests<CreateVolumeRequest>("createVolume");
    expect(req!.sizeBytes).toBe(1_000_000_000n);
    expect(req!.format).toBe(VolumeFormat.UNSPECIFIED);
    expect(req!.qcow2).toBeUndefined();
    expect(req!.constraints?.poolId).toBe("node1/default");
    expect(fake!.calls[0]!.authorization).toBeNull();
  });

  it("prints the response as JSON", async () => {
    await controller();
    const r = await stowctl([
      "volume",
      "create",
      "vm1-disk3",
      "--size",
      "512M",
      "--format",
      "raw",
      "-o",
      "json",
    ]);
    expect(r.code).toBe(0);
    const res = JSON.parse(r.stdout);
    expect(res.volume).toMatchObject({
      name: "vm1-disk3",
      sizeBytes: String(512n * 1024n * 1024n),
      format: "raw",
    });
    expect(res.volume.state).toBe("creating");
    expect(res.operation).toMatchObject({ id: "op-vm1-disk3", kind: "create_volume", state: "pending" });
    expect(res.placement).toMatchObject({ poolId: "node1/default", numaNode: 0, cpuSet: "0-3" });
  });

  it("shows where a dry run would place the volume", async () => {
    await controller();
    const r = await stowctl(["volume", "create", "vm1-disk4", "--size", "10G", "--dry-run"]);
    expect(r.code).toBe(0);
    expect(fake!.requests<CreateVolumeRequest>("createVolume")[0]!.dryRun).toBe(true);
    expect(r.stdout).toMatch(
      /dry run: vm1-disk4 \(10 GiB\) would be placed on node1\/default \(host node1, NUMA node 0/,
    );
  });

  it.each([
    [["volume", "create", "VM_1", "--size", "10G"], /volume name "VM_1" is not valid/],
    [["volume", "create", "../etc", "--size", "10G"], /volume name "..\/etc" is not valid/],
    [["volume", "create", "vm1", "--size", "10X"], /unknown unit "X"/],
    [["volume", "create", "vm1", "--size", "0"], /greater than zero/],
    [["volume", "create", "vm1", "--size", "1000"], /multiple of 512/],
    [["volume", "create", "vm1", "--size", "10G", "--format", "vmdk"], /use one of raw, qcow2/],
    [["volume", "create", "vm1", "--size", "10G", "--cluster-size", "3K"], /power of two/],
    [
      ["volume", "create", "vm1", "--size", "10G", "--format", "raw", "--lazy-refcounts"],
      /need --format qcow2/,
    ],
    [["volume", "create", "vm1", "--size", "10G", "--numa-node", "0"], /--numa-node needs --numa-host/],
    [["volume", "create", "vm1", "--size", "10G", "--label", "novalue"], /key=value/],
    [["volume", "create", "vm1", "--size", "10G", "--wait-timeout", "soon"], /duration like 30s/],
    [["volume", "create", "vm1"], /required option '--size <size>' not specified/],
    [["volume", "create", "vm1", "--size", "10G", "--bogus"], /unknown option '--bogus'/],
    [["volume", "frobnicate"], /unknown command 'frobnicate'/],
    [["-o", "yaml", "volume", "list"], /Allowed choices are table, wide, json/],
    [["--server", "ftp://x", "volume", "list"], /must use http:\/\/ \(h2c\) or https:\/\//],
    [["--timeout", "0s", "volume", "list"], /--timeout "0s" is not valid/],
  ])("exits 2 without calling the server: %j", async (args, message) => {
    await controller();
    const r = await stowctl(args);
    expect(r.stderr).toMatch(message);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(fake!.calls).toEqual([]);
  });
});

describe("server errors", () => {
  it.each(
    (
      [
        [Code.InvalidArgument, 2, /^error: size too big: see the command's --help\n$/],
        [Code.NotFound, 3, /^error: size too big: check --pool\/--host with `stowctl pool list`/],
        [
          Code.AlreadyExists,
          4,
          /^error: size too big: pick another name, or look at the existing one with `stowctl volume get vm9`\n$/,
        ],
        [Code.Aborted, 4, /try again/],
        [
          Code.ResourceExhausted,
          5,
          /no pool can take it; see why with `stowctl placement explain --size SIZE`/,
        ],
        [Code.FailedPrecondition, 6, /not in a state that allows this/],
        [
          Code.Unavailable,
          7,
          /cannot reach the controller at http:\/\/127\.0\.0\.1:\d+ \(size too big\): is it running\?/,
        ],
        [Code.DeadlineExceeded, 8, /did not answer in time/],
        [Code.Internal, 1, /controller fault; see its logs/],
        [Code.PermissionDenied, 1, /ask for an operator or admin token/],
        [Code.Unauthenticated, 1, /set a token with --token or STOWAGE_TOKEN/],
      ] as const
    ).map(([code, exit, message]) => ({ name: Code[code], code, exit, message })),
  )("maps $name to exit $exit", async ({ code, exit, message }) => {
    await controller({
      volumes: {
        createVolume: () => {
          throw new ConnectError("size too big", code);
        },
      },
    });
    const r = await stowctl(["volume", "create", "vm9", "--size", "10G"]);
    expect(r.code).toBe(exit);
    expect(r.stderr.split("\n")).toHaveLength(2); // one line
    expect(r.stderr).toMatch(message);
  });

  it("exits 7 with a hint when nothing listens at the server address", async () => {
    const port = await closedPort();
    const r = await stowctl(["volume", "list"], { STOWAGE_SERVER: `127.0.0.1:${port}` });
    expect(r.code).toBe(7);
    expect(r.stderr).toMatch(
      new RegExp(
        `^error: cannot reach the controller at http://127\\.0\\.0\\.1:${port}\\b.*is it running\\?`,
      ),
    );
    expect(r.stderr).toContain("start a local cluster with `npm run up` or set --server/STOWAGE_SERVER");
  });

  it("exits 8 when a call outlives --timeout", async () => {
    await controller({
      hosts: {
        listHosts: async (_req, ctx) => {
          await delay(5000, undefined, { signal: ctx.signal }).catch(() => {});
          return { hosts: [] };
        },
      },
    });
    const r = await stowctl(["host", "list", "--timeout", "200ms"]);
    expect(r.code).toBe(8);
    expect(r.stderr).toMatch(/did not answer in time: raise --timeout/);
  });

  it("accepts host:port without a scheme and prefers --server over STOWAGE_SERVER", async () => {
    await controller();
    const port = await closedPort();
    const r = await stowctl(["--server", fake!.url.replace("http://", ""), "host", "list"], {
      STOWAGE_SERVER: `127.0.0.1:${port}`,
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/node1/);
  });
});

describe("--wait", () => {
  it("follows the watch stream until the volume is available", async () => {
    await controller({
      volumes: {
        async *watchVolumes(req) {
          expect(req.volume).toBe("vol-vm1-disk5");
          yield watchEvent(volume({ name: "vm1-disk5", state: VolumeState.CREATING }));
          await delay(50);
          yield watchEvent(volume({ name: "other", state: VolumeState.AVAILABLE }));
          yield watchEvent(volume({ name: "vm1-disk5", state: VolumeState.AVAILABLE }));
          await delay(10_000);
        },
      },
    });
    const r = await stowctl(["volume", "create", "vm1-disk5", "--size", "10G", "--wait"]);
    expect(r.stderr).toMatch(/^creating vm1-disk5 on node1\/default … available \(\d+(\.\d)?m?s\)\n$/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^State:\s+available$/m);
    expect(fake!.requests("getVolume")).toEqual([]);
  });

  it("prints the final volume as JSON after waiting", async () => {
    await controller({
      volumes: {
        async *watchVolumes() {
          yield watchEvent(volume({ name: "vm1-disk6", state: VolumeState.AVAILABLE }));
        },
      },
    });
    const r = await stowctl(["volume", "create", "vm1-disk6", "--size", "10G", "--wait", "-o", "json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).volume.state).toBe("available");
  });

  it("exits non-zero with the error when the volume ends in error", async () => {
    await controller({
      volumes: {
        async *watchVolumes() {
          yield watchEvent(
            volume({
              name: "vm1-disk7",
              state: VolumeState.ERROR,
              error: { code: "tool_failed", message: "qemu-img create failed: No space left on device" },
            }),
          );
        },
      },
    });
    const r = await stowctl(["volume", "create", "vm1-disk7", "--size", "10G", "--wait"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^creating vm1-disk7 on node1\/default … error \(/);
    expect(r.stderr).toMatch(
      /error: volume vm1-disk7 is error: tool_failed: qemu-img create failed: No space left on device; see `stowctl volume get vm1-disk7` and `stowctl operation get op-vm1-disk7`/,
    );
  });

  it("falls back to polling GetVolume when the stream fails", async () => {
    let polls = 0;
    await controller({
      volumes: {
        // biome-ignore lint/correctness/useYield: a stream that fails before its first message
        async *watchVolumes() {
          throw new ConnectError("no streams here", Code.Unimplemented);
        },
        getVolume: () => {
          polls++;
          return {
            volume: volume({
              name: "vm1-disk8",
              state: polls < 3 ? VolumeState.CREATING : VolumeState.AVAILABLE,
            }),
          };
        },
      },
    });
    const r = await stowctl(["volume", "create", "vm1-disk8", "--size", "10G", "--wait"]);
    expect(r.code).toBe(0);
    expect(polls).toBe(3);
    expect(r.stderr).toMatch(/… available/);
  });

  it("exits 8 when the wait times out", async () => {
    await controller({
      volumes: {
        async *watchVolumes(_req, ctx) {
          yield watchEvent(volume({ name: "vm1-disk9", state: VolumeState.CREATING }));
          await delay(10_000, undefined, { signal: ctx.signal }).catch(() => {});
        },
      },
    });
    const started = Date.now();
    const r = await stowctl([
      "volume",
      "create",
      "vm1-disk9",
      "--size",
      "10G",
      "--wait",
      "--wait-timeout",
      "300ms",
    ]);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(r.code).toBe(8);
    expect(r.stderr).toMatch(/still creating after 300ms/);
    expect(r.stderr).toMatch(
      /timed out after 300ms waiting for volume vm1-disk9 to become available \(it is creating\)/,
    );
  });

  it("waits for a delete to finish, treating NotFound while polling as deleted", async () => {
    await controller({
      volumes: {
        deleteVolume: (req) => ({
          volume: volume({ name: "vm1-disk0", state: VolumeState.DELETING }),
          operation: { id: `op-delete-${req.volume}` },
        }),
        // biome-ignore lint/correctness/useYield: a stream that fails before its first message
        async *watchVolumes() {
          throw new ConnectError("stream broke", Code.Internal);
        },
        getVolume: () => {
          throw new ConnectError("volume vm1-disk0 not found", Code.NotFound);
        },
      },
    });
    const r = await stowctl(["volume", "delete", "vm1-disk0", "--wipe", "zero", "--wait"]);
    expect(r.code).toBe(0);
    expect(fake!.requests<DeleteVolumeRequest>("deleteVolume")[0]).toMatchObject({
      volume: "vm1-disk0",
      wipe: WipeMode.ZERO,
    });
    expect(r.stderr).toMatch(/^deleting vm1-disk0 on node1\/default … deleted \(/);
    expect(r.stdout).toBe("volume vm1-disk0 (vol-vm1-disk0) is deleted, operation op-delete-vm1-disk0\n");
  });

  it("waits for a delete over the stream", async () => {
    await controller({
      volumes: {
        deleteVolume: () => ({ volume: volume({ name: "vm1-disk0", state: VolumeState.DELETING }) }),
        async *watchVolumes() {
          yield watchEvent(volume({ name: "vm1-disk0", state: VolumeState.DELETING }));
          yield watchEvent(volume({ name: "vm1-disk0", state: VolumeState.DELETED }));
        },
      },
    });
    const r = await stowctl(["volume", "delete", "vm1-disk0", "--wait", "-o", "json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).volume.state).toBe("deleted");
  });
});

describe("placement explain", () => {
  it("prints the chosen pool and every candidate", async () => {
    await controller({
      placement: {
        explainPlacement: () => ({
          feasible: true,
          placement: {
            hostId: "node1",
            poolId: "node1/default",
            numaNode: 0,
            cpuSet: "0-3",
            summary: "node1/default: most free space on NUMA node 0",
            candidates: [
              {
                poolId: "node1/default",
                hostId: "node1",
                feasible: true,
                score: 0.8731,
                scores: [{ scorer: "free_space", value: 0.8, weight: 1 }],
              },
              {
                poolId: "node1/thin",
                hostId: "node1",
                feasible: false,
                refusedBy: "health",
                reason: "pool is unhealthy: thin pool metadata 95% full",
              },
            ],
          },
        }),
      },
    });
    const r = await stowctl([
      "placement",
      "explain",
      "--size",
      "10G",
      "--kind",
      "dir",
      "--numa-host",
      "node1",
      "--numa-node",
      "0",
    ]);
    expect(r.code).toBe(0);
    const [req] = fake!.requests<ExplainPlacementRequest>("explainPlacement");
    expect(req!.volume).toMatchObject({
      sizeBytes: 10n * GiB,
      constraints: { poolKinds: [PoolKind.DIR], numa: { hostId: "node1", numaNode: 0, required: false } },
    });
    expect(r.stdout).toMatch(/^Chosen pool: node1\/default \(host node1, NUMA node 0 \(CPUs 0-3\)\)$/m);
    expect(r.stdout).toMatch(/^POOL\s+HOST\s+FEASIBLE\s+SCORE\s+REFUSED_BY\s+REASON$/m);
    expect(r.stdout).toMatch(/^node1\/default\s+node1\s+yes\s+0\.873\s+-\s+-$/m);
    expect(r.stdout).toMatch(
      /^node1\/thin\s+node1\s+no\s+-\s+health\s+pool is unhealthy: thin pool metadata 95% full$/m,
    );

    const json = await stowctl(["placement", "explain", "--size", "10G", "-o", "json"]);
    const res = JSON.parse(json.stdout);
    expect(res.feasible).toBe(true);
    expect(res.placement.candidates[1]).toMatchObject({ feasible: false, refusedBy: "health" });
  });

  it("says so when no pool fits", async () => {
    await controller({
      placement: {
        explainPlacement: () => ({
          feasible: false,
          placement: {
            candidates: [
              { poolId: "node1/default", hostId: "node1", refusedBy: "capacity", reason: "needs 2 TiB" },
            ],
          },
        }),
      },
    });
    const r = await stowctl(["placement", "explain", "--size", "2T"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Chosen pool: none/m);
    expect(r.stdout).toMatch(/capacity\s+needs 2 TiB$/m);
  });
});

describe("operation", () => {
  it("gets an operation", async () => {
    await controller();
    const r = await stowctl(["operation", "get", "op-vm1-disk0"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Kind:\s+create_volume$/m);
    expect(r.stdout).toMatch(/^State:\s+succeeded$/m);
  });

  it("lists the operations of a volume given by name", async () => {
    await controller();
    const r = await stowctl(["operation", "list", "--volume", "vm1-disk0"]);
    expect(r.code).toBe(0);
    expect(fake!.requests<ListOperationsRequest>("listOperations")[0]!.volumeId).toBe("vol-vm1-disk0");
    expect(r.stdout).toMatch(
      /^op-vm1-disk0\s+create_volume\s+succeeded\s+node1\s+vol-vm1-disk0\s+1\s+5m ago$/m,
    );
    const json = await stowctl(["operation", "list", "-o", "json"]);
    expect(JSON.parse(json.stdout)[0]).toMatchObject({ kind: "create_volume", state: "succeeded" });
  });
});

describe("finding", () => {
  it("lists findings as a table and sends the filters", async () => {
    await controller();
    const r = await stowctl([
      "finding",
      "list",
      "--host",
      "node1",
      "--pool",
      "node1/default",
      "--kind",
      "orphan",
    ]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^KIND\s+HOST\s+POOL\s+SUBJECT\s+SIZE\s+FORMAT\s+QUARANTINED\s+LAST SEEN$/);
    expect(lines.slice(1)).toEqual([
      expect.stringMatching(
        new RegExp(`^orphan\\s+node1\\s+node1/default\\s+${ORPHAN_ID}\\s+8 GiB\\s+qcow2\\s+no\\s+`),
      ),
    ]);
    expect(fake!.requests<ListFindingsRequest>("listFindings")).toEqual([
      expect.objectContaining({ hostId: "node1", poolId: "node1/default", kind: FindingKind.ORPHAN }),
    ]);
  });

  it("lists findings as JSON with lowercase kinds and sizes as strings", async () => {
    await controller();
    const r = await stowctl(["finding", "list", "-o", "json"]);
    expect(r.code).toBe(0);
    const findings = JSON.parse(r.stdout);
    expect(findings.map((f: { kind: string }) => f.kind)).toEqual(["orphan", "foreign"]);
    expect(findings[0]).toMatchObject({ subject: ORPHAN_ID, sizeBytes: String(8n * GiB), format: "qcow2" });
  });

  it("refuses an unknown kind and a pool that is not HOST/POOL before calling the server", async () => {
    await controller();
    const kind = await stowctl(["finding", "list", "--kind", "stray"]);
    expect(kind.code).toBe(2);
    expect(kind.stderr).toMatch(/--kind "stray" is not valid: use one of orphan, missing, foreign/);
    expect((await stowctl(["finding", "list", "--pool", "default"])).code).toBe(2);
    expect(fake!.requests("listFindings")).toEqual([]);
  });

  it("quarantines an orphan with a reason and says the artefact stays", async () => {
    await controller();
    const r = await stowctl(["finding", "quarantine", ORPHAN_ID, "--host", "node1", "--reason", "vm7?"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Quarantined:\s+.* by admin$/m);
    expect(r.stdout).toMatch(/^Reason:\s+vm7\?$/m);
    expect(r.stderr).toMatch(/is quarantined: it stays where it is/);
    expect(fake!.requests<QuarantineFindingRequest>("quarantineFinding")).toEqual([
      expect.objectContaining({ volumeId: ORPHAN_ID, hostId: "node1", reason: "vm7?" }),
    ]);
  });

  it("refuses what is not a volume id before calling the server", async () => {
    await controller();
    for (const cmd of ["quarantine", "adopt"]) {
      const r = await stowctl(["finding", cmd, "../etc/passwd"]);
      expect(r.code, cmd).toBe(2);
      expect(r.stderr).toMatch(/is not a volume id \(vol- and 32 hex digits\)/);
    }
    expect(fake!.calls).toEqual([]);
  });

  it("adopts an orphan under a name with labels and prints the volume", async () => {
    await controller();
    const r = await stowctl(["finding", "adopt", ORPHAN_ID, "--name", "vm7-disk0", "--label", "app=db"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Name:\s+vm7-disk0$/m);
    expect(r.stdout).toMatch(new RegExp(`^ID:\\s+${ORPHAN_ID}$`, "m"));
    expect(r.stdout).toMatch(/^Size:\s+8 GiB/m);
    expect(fake!.requests<AdoptFindingRequest>("adoptFinding")).toEqual([
      expect.objectContaining({ volumeId: ORPHAN_ID, hostId: "", name: "vm7-disk0", labels: { app: "db" } }),
    ]);
  });

  it("exits 5 when the pool cannot hold the orphan, with the controller's reason", async () => {
    await controller({
      findings: {
        adoptFinding: () => {
          throw new ConnectError("pool node1/default cannot hold vol-x's 8 GiB", Code.ResourceExhausted);
        },
      },
    });
    const r = await stowctl(["finding", "adopt", ORPHAN_ID]);
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/^error: pool node1\/default cannot hold vol-x's 8 GiB/);
  });

  it("exits 3 for an orphan nobody reports", async () => {
    await controller();
    const r = await stowctl(["finding", "quarantine", "vol-00000000000000000000000000000000"]);
    expect(r.code).toBe(3);
  });
});

describe("help", () => {
  it("documents the exit codes and the environment", async () => {
    const r = await stowctl(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Exit codes:/);
    expect(r.stdout).toMatch(/7 {2}unavailable: cannot reach the controller/);
    expect(r.stdout).toMatch(/STOWAGE_SERVER/);
  });

  it("gives every command a description and examples", async () => {
    const root = createProgram({ out: { write: () => 0 }, err: { write: () => 0 }, env: {} }).command();
    const paths: string[][] = [];
    const walk = (cmd: Command, path: string[]) => {
      for (const sub of cmd.commands) {
        expect(sub.description(), path.concat(sub.name()).join(" ")).not.toBe("");
        paths.push([...path, sub.name()]);
        walk(sub, [...path, sub.name()]);
      }
    };
    walk(root, []);
    expect(paths.map((p) => p.join(" "))).toEqual(
      expect.arrayContaining([
        "host list",
        "host get",
        "pool list",
        "pool get",
        "volume create",
        "volume get",
        "volume list",
        "volume delete",
        "placement explain",
        "operation get",
        "operation list",
        "finding list",
        "finding quarantine",
        "finding adopt",
      ]),
    );
    for (const path of paths) {
      const r = await stowctl([...path, "--help"]);
      expect(r.code, path.join(" ")).toBe(0);
      expect(r.stdout, path.join(" ")).toMatch(/Examples:\n {2}\$ stowctl /);
    }
  });

  it("exits 2 and prints help when a group is given no subcommand", async () => {
    const r = await stowctl(["volume"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Usage: stowctl volume/);
  });
});
