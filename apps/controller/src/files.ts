import { randomBytes } from "node:crypto";
import { constants } from "node:fs";
import { link, open, rename, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/**
 * Writes `data` to `path` atomically: a temporary file beside it (created with `mode`, 0600 unless told),
 * fsynced, then renamed into place. With `exclusive`, it is linked instead, which fails when `path` exists: a
 * file another process made first (a CA, a NATS key of a second controller starting on the same directory) is
 * never overwritten, and the answer is false. Otherwise the answer is true.
 */
export async function writeFileAtomic(
  path: string,
  data: string,
  opts: { mode?: number; exclusive?: boolean } = {},
): Promise<boolean> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  const fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, opts.mode ?? 0o600);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    if (opts.exclusive) await link(tmp, path);
    else await rename(tmp, path);
    return true;
  } catch (err) {
    if (opts.exclusive && (err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  } finally {
    // After a rename the name is gone already; after a link (or a failure) this removes the temporary one.
    await unlink(tmp).catch(() => {});
  }
}
