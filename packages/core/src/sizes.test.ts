import { describe, expect, it } from "vitest";
import { formatSize, parseSize, validateVolumeSize } from "./sizes.js";

describe("parseSize", () => {
  it.each([
    ["0", 0n],
    ["512", 512n],
    ["1k", 1024n],
    ["1K", 1024n],
    ["1KiB", 1024n],
    ["10G", 10n * 1024n ** 3n],
    ["512M", 512n * 1024n ** 2n],
    ["1.5G", 1536n * 1024n ** 2n],
    ["2T", 2n * 1024n ** 4n],
    ["1KB", 1000n],
    ["10GB", 10n * 1000n ** 3n],
    ["3 MiB", 3n * 1024n ** 2n],
  ])("reads %s as %s bytes", (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(["", "ten", "-1G", "1X", "1.5", "../1G", "1e9"])("refuses %j with a hint", (text) => {
    expect(() => parseSize(text)).toThrow(/size .* (is not valid|unknown unit|whole number)/);
  });
});

describe("formatSize", () => {
  it.each([
    [0n, "0 B"],
    [512n, "512 B"],
    [1024n, "1 KiB"],
    [10n * 1024n ** 3n, "10 GiB"],
    [1536n * 1024n ** 2n, "1.5 GiB"],
  ])("writes %s as %s", (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
  });
});

describe("validateVolumeSize", () => {
  it("refuses zero, absurd and unaligned sizes", () => {
    expect(() => validateVolumeSize(0n)).toThrow(/greater than zero/);
    expect(() => validateVolumeSize(2n ** 60n)).toThrow(/larger than the maximum/);
    expect(() => validateVolumeSize(1000n)).toThrow(/multiple of 512/);
    expect(validateVolumeSize(1024n ** 3n)).toBe(1024n ** 3n);
  });
});
