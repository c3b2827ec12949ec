import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { trackDir } from "./cleanup.js";

export interface TempDir {
  /** Absolute path of the new directory (mode 0700). */
  readonly path: string;
  /** Removes the directory and everything in it. Idempotent. Kept when STOWAGE_TEST_KEEP_TMP=1. */
  cleanup(): Promise<void>;
}

/**
 * Creates a fresh directory under os.tmpdir() named `<prefix>XXXXXX`. It is removed by `cleanup()`, or when
 * the test process exits if nobody called it. With STOWAGE_TEST_KEEP_TMP=1 directories are kept for
 * inspection (and their paths printed on stderr at cleanup).
 */
export async function makeTempDir(prefix = "stowage-test-"): Promise<TempDir> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  const keep = process.env.STOWAGE_TEST_KEEP_TMP === "1";
  const untrack = keep ? () => {} : trackDir(path);
  let done = false;
  return {
    path,
    async cleanup() {
      if (done) return;
      done = true;
      if (keep) {
        process.stderr.write(`[testkit] kept ${path} (STOWAGE_TEST_KEEP_TMP=1)\n`);
        return;
      }
      await rm(path, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
      untrack();
    },
  };
}
