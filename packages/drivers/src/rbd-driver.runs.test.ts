import { readFileSync } from "node:fs";
import { join } from "node:path";
import { newId } from "@stowage/core";
import { createRbdDriver, RBD_META, type ToolResult, type ToolRunner } from "@stowage/drivers/testing";
import { describe, expect, it } from "vitest";

// How many tools an rbd pool's capacity() and list() run, against a fake runner that answers the reads with
// the JSON shapes of Ceph 16 (the golden files in testdata/). The driver against a real cluster is in
// rbd-driver.test.ts; this only counts processes, which must not grow with the number of images in capacity().

const MiB = 1024 * 1024;
const golden = (name: string) => readFileSync(join(import.meta.dirname, "testdata", name), "utf8");

interface Image {
  name: string;
  sizeBytes: number;
  /** The volume id in its metadata; undefined: none. */
  marker?: string;
}

function fakeCeph(images: Image[], opts: { mgr: boolean }) {
  const ran: string[] = [];
  const ok = (stdout: string): ToolResult => ({ stdout, stderr: "", exitCode: 0, durationMs: 0 });
  const runner: ToolRunner = {
    async run(tool, argv) {
      ran.push(`${tool} ${argv[0]}${argv[0] === "osd" ? ` ${argv[1]}` : ""}`);
      const last = argv[argv.length - 1] ?? "";
      if (tool === "rbd" && argv[0] === "ls") {
        return ok(
          JSON.stringify(images.map((i) => ({ image: i.name, id: i.name, size: i.sizeBytes, format: 2 }))),
        );
      }
      if (tool === "rbd" && argv[0] === "du") {
        const rows = images.map((i) => ({ name: i.name, provisioned_size: i.sizeBytes, used_size: MiB }));
        return ok(JSON.stringify({ images: rows, total_used_size: MiB * images.length }));
      }
      if (tool === "rbd" && argv[0] === "image-meta") {
        const image = images.find((i) => last.endsWith(`/${i.name}`));
        const meta = image?.marker
          ? { [RBD_META.volumeId]: image.marker, [RBD_META.operationId]: newId("op") }
          : {};
        return ok(JSON.stringify(meta));
      }
      if (tool === "ceph" && argv[0] === "df") {
        if (!opts.mgr) return ok(golden("rbd-ceph-df-no-mgr.json"));
        const pool = {
          stored: 10 * MiB,
          objects: 3,
          bytes_used: 30 * MiB,
          percent_used: 0.1,
          max_avail: 900 * MiB,
        };
        return ok(
          JSON.stringify({
            stats: {
              total_bytes: 3000 * MiB,
              total_avail_bytes: 2700 * MiB,
              total_used_bytes: 300 * MiB,
              total_used_raw_bytes: 300 * MiB,
            },
            pools: [{ name: "rbd", id: 1, stats: pool }],
          }),
        );
      }
      if (tool === "ceph" && argv[0] === "osd" && argv[1] === "dump")
        return ok(golden("rbd-ceph-osd-dump.json"));
      if (tool === "ceph" && argv[0] === "osd" && argv[1] === "metadata")
        return ok(golden("rbd-ceph-osd-metadata.json"));
      throw new Error(`the fake ceph has no answer for ${tool} ${argv.join(" ")}`);
    },
  };
  return { driver: createRbdDriver({ poolName: "ceph", cephPool: "rbd", runner }), ran };
}

/** `n` images of ours (1, 2, ... MiB), one foreign image, one stray: our naming, another volume's marker. */
function pool(n: number): { images: Image[]; ours: bigint } {
  const images: Image[] = [];
  let ours = 0n;
  for (let i = 1; i <= n; i++) {
    const id = newId("vol");
    images.push({ name: `stowage-${id}`, sizeBytes: i * MiB, marker: id });
    ours += BigInt(i * MiB);
  }
  images.push({ name: "someone-elses", sizeBytes: 1024 * MiB });
  images.push({ name: `stowage-${newId("vol")}`, sizeBytes: 4 * MiB, marker: newId("vol") });
  return { images, ours };
}

describe("rbd driver: tool runs of capacity() and list()", () => {
  it("capacity() runs rbd ls and ceph df, whatever the number of images", async () => {
    for (const n of [3, 300]) {
      const { images, ours } = pool(n);
      const { driver, ran } = fakeCeph(images, { mgr: true });
      await driver.list();
      ran.length = 0;
      const c = await driver.capacity();
      expect(ran).toEqual(["rbd ls", "ceph df"]);
      expect(c).toEqual({
        totalBytes: 910n * 1024n * 1024n,
        usedBytes: 10n * 1024n * 1024n,
        freeBytes: 900n * 1024n * 1024n,
        provisionedBytes: ours,
      });
    }
  });

  it("without a ceph-mgr, capacity() adds one rbd du and the OSD map and metadata, still none per image", async () => {
    const { images } = pool(50);
    const { driver, ran } = fakeCeph(images, { mgr: false });
    const c = await driver.capacity();
    expect(ran).toEqual(["rbd ls", "ceph df", "rbd du", "ceph osd dump", "ceph osd metadata"]);
    expect(c.usedBytes).toBe(52n * 1024n * 1024n);
  });

  it("a stray under our naming counts as provisioned until a list() finds it is not ours", async () => {
    const { images, ours } = pool(2);
    const { driver } = fakeCeph(images, { mgr: true });
    expect((await driver.capacity()).provisionedBytes).toBe(ours + 4n * 1024n * 1024n);
    const { volumes, foreign } = await driver.list();
    expect(volumes).toHaveLength(2);
    expect(foreign).toHaveLength(2);
    expect((await driver.capacity()).provisionedBytes).toBe(ours);
  });

  it("list() runs rbd ls and rbd du once, and reads each candidate image's metadata (the ownership marker)", async () => {
    const { images } = pool(20);
    const { driver, ran } = fakeCeph(images, { mgr: true });
    await driver.list();
    expect(ran.filter((r) => r !== "rbd image-meta")).toEqual(["rbd ls", "rbd du"]);
    // 20 of ours and the stray: the image named someone-elses is foreign by its name alone.
    expect(ran.filter((r) => r === "rbd image-meta")).toHaveLength(21);
  });
});
