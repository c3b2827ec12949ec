import type { WipeMode } from "@stowage/core";
import { sleep } from "../async.js";
import { parseQemuImgMap, qemuImgMapArgv } from "../qemu-img.js";
import type { ToolRunner } from "../runner.js";
import type { PoolFs } from "./fs.js";

const WIPE_CHUNK_BYTES = 1024 * 1024;

/**
 * Destroys a file's data before it is unlinked.
 * - zero: writes zeros over every range the filesystem holds data for (`qemu-img map` of the file as raw);
 *   holes hold nothing, and writing zeros into them would allocate the whole virtual size of a sparse image.
 * - discard: truncates the file to nothing. That releases every block at once (and so discards them on
 *   filesystems mounted with `discard`), exactly what a punch-hole over the whole file would do, without a
 *   tool or a filesystem that supports punching; unlike a bare unlink it also frees blocks that another
 *   open handle or hard link would keep alive.
 * Neither reaches past the filesystem: on copy-on-write filesystems and SSDs old copies may survive.
 */
export async function wipeFile(
  runner: ToolRunner,
  fs: PoolFs,
  path: string,
  mode: WipeMode,
  bytesPerSecond: number,
): Promise<void> {
  if (mode === "none") return;
  if (mode === "discard") {
    const fh = await fs.openForWrite(path);
    try {
      await fh.truncate(0);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return;
  }
  const argv = qemuImgMapArgv(path, "raw");
  const { stdout } = await runner.run("qemu-img", argv);
  const extents = parseQemuImgMap(stdout, argv).filter((e) => e.data);
  const zeros = Buffer.alloc(WIPE_CHUNK_BYTES);
  const started = performance.now();
  let written = 0;
  const fh = await fs.openForWrite(path);
  try {
    for (const e of extents) {
      let pos = Number(e.start);
      const end = Number(e.start + e.length);
      while (pos < end) {
        const n = Math.min(WIPE_CHUNK_BYTES, end - pos);
        await fh.write(zeros, n, pos);
        pos += n;
        written += n;
        if (bytesPerSecond > 0) {
          const due = (written / bytesPerSecond) * 1000 - (performance.now() - started);
          if (due > 0) await sleep(due);
        }
      }
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}
