import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { type ControllerConfig, pkiDirOf } from "./config.js";
import { writeFileAtomic } from "./files.js";

/**
 * Seals the secrets the controller must keep and hand out again (CHAP secrets, cephx keys): AES-256-GCM with a
 * key of the controller's own, `secrets.key` in the PKI directory (0600, made on first use, shared by every
 * controller of a cluster like the CA: docs/security.md). The database holds only sealed values, so a dump or a
 * replica of it gives no secret away. A sealed value is `v1.` + base64url(iv | tag | ciphertext); the export id
 * it belongs to is bound in as additional data, so a sealed value copied onto another export does not open.
 */
export interface SecretBox {
  seal(plain: string, bound: string): string;
  open(sealed: string, bound: string): string;
}

export const SECRET_KEY_FILE = "secrets.key";

export function secretBoxFromKey(key: Buffer): SecretBox {
  if (key.length !== 32) throw new Error("the secret key must be 32 bytes");
  return {
    seal(plain, bound) {
      const iv = randomBytes(12);
      const c = createCipheriv("aes-256-gcm", key, iv);
      c.setAAD(Buffer.from(bound));
      const body = Buffer.concat([c.update(plain, "utf8"), c.final()]);
      return `v1.${Buffer.concat([iv, c.getAuthTag(), body]).toString("base64url")}`;
    },
    open(sealed, bound) {
      if (!sealed.startsWith("v1.")) throw new Error("not a sealed secret");
      const raw = Buffer.from(sealed.slice(3), "base64url");
      if (raw.length < 28) throw new Error("a sealed secret too short");
      const d = createDecipheriv("aes-256-gcm", key, raw.subarray(0, 12));
      d.setAAD(Buffer.from(bound));
      d.setAuthTag(raw.subarray(12, 28));
      try {
        return Buffer.concat([d.update(raw.subarray(28)), d.final()]).toString("utf8");
      } catch {
        // Never the value: only that it does not open (another key, or another export's).
        throw new Error(
          `a sealed secret of ${bound} does not open with this controller's ${SECRET_KEY_FILE}`,
        );
      }
    },
  };
}

const boxes = new Map<string, Promise<SecretBox>>();

/** The controller's secret box, its key read (or made, once, race-free) from the PKI directory. */
export function secretBox(config: Pick<ControllerConfig, "pkiDir" | "dataDir">): Promise<SecretBox> {
  const dir = pkiDirOf(config);
  let box = boxes.get(dir);
  if (!box) {
    box = loadKey(dir).then(secretBoxFromKey);
    box.catch(() => boxes.delete(dir));
    boxes.set(dir, box);
  }
  return box;
}

async function loadKey(dir: string): Promise<Buffer> {
  const path = join(dir, SECRET_KEY_FILE);
  const read = async () => {
    try {
      return Buffer.from((await readFile(path, "utf8")).trim(), "base64");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  };
  let key = await read();
  if (!key) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    // Linked, not renamed: a key another controller made first is kept (files.ts).
    await writeFileAtomic(path, `${randomBytes(32).toString("base64")}\n`, { exclusive: true });
    key = await read();
  }
  if (key?.length !== 32) throw new Error(`${path} does not hold a 32-byte key (base64)`);
  return key;
}
