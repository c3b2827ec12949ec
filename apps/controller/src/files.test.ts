import { mkdtempSync, readdirSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { writeFileAtomic } from "./files.js";

describe("writeFileAtomic", () => {
  const dir = mkdtempSync(join(tmpdir(), "stowage-files-"));

  it("writes a file readable by its owner only, and replaces it", async () => {
    const p = join(dir, "a.key");
    expect(await writeFileAtomic(p, "one")).toBe(true);
    expect(statSync(p).mode & 0o777).toBe(0o600);
    await writeFileAtomic(p, "two");
    expect(readFileSync(p, "utf8")).toBe("two");
    await writeFileAtomic(join(dir, "b.crt"), "cert", { mode: 0o644 });
    expect(statSync(join(dir, "b.crt")).mode & 0o777).toBe(0o644);
  });

  it("never overwrites a file that exists when exclusive, and leaves no temporary file behind", async () => {
    const p = join(dir, "ca.key");
    expect(await writeFileAtomic(p, "first", { exclusive: true })).toBe(true);
    expect(await writeFileAtomic(p, "second", { exclusive: true })).toBe(false);
    expect(readFileSync(p, "utf8")).toBe("first");
    expect(readdirSync(dir).filter((f) => f.endsWith(".tmp"))).toEqual([]);
  });
});
