import { PoolKind, PoolKindSchema } from "@stowage/proto";
import { describe, expect, it } from "vitest";
import { normalizeServerUrl } from "./client.js";
import { CliError } from "./errors.js";
import {
  parseClusterSize,
  parseDuration,
  parseEnumList,
  parseLabels,
  parsePoolId,
  parseUint,
  parseVolumeSize,
} from "./parse.js";

function usage(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CliError);
    expect((err as CliError).exitCode).toBe(2);
    return (err as CliError).message;
  }
  throw new Error("expected a usage error");
}

describe("parseVolumeSize", () => {
  it("reads virsh units", () => {
    expect(parseVolumeSize("10G")).toBe(10n * 1024n ** 3n);
    expect(parseVolumeSize("1.5T")).toBe((3n * 1024n ** 4n) / 2n);
    expect(parseVolumeSize("10GB")).toBe(10_000_000_000n);
    expect(parseVolumeSize("1048576")).toBe(1048576n);
  });

  it("refuses what the controller would refuse", () => {
    expect(usage(() => parseVolumeSize("ten"))).toMatch(/^--size: size "ten" is not valid/);
    expect(usage(() => parseVolumeSize("2P"))).toMatch(/larger than the maximum/);
    expect(usage(() => parseVolumeSize("100"))).toMatch(/multiple of 512/);
  });
});

describe("parseClusterSize", () => {
  it("accepts powers of two from 512 to 2M", () => {
    expect(parseClusterSize("512")).toBe(512n);
    expect(parseClusterSize("64K")).toBe(65536n);
    expect(parseClusterSize("2M")).toBe(2097152n);
    expect(usage(() => parseClusterSize("4M"))).toMatch(/power of two from 512 to 2M/);
    expect(usage(() => parseClusterSize("256"))).toMatch(/power of two/);
  });
});

describe("parseDuration", () => {
  it.each([
    ["500ms", 500],
    ["30s", 30_000],
    ["5m", 300_000],
    ["1h30m", 5_400_000],
    ["1.5s", 1500],
    ["90", 90_000],
  ])("%s is %i ms", (input, ms) => {
    expect(parseDuration(input, "--wait-timeout")).toBe(ms);
  });

  it.each(["", "0", "-1s", "5 minutes", "1d", "s"])("refuses %j", (input) => {
    expect(usage(() => parseDuration(input, "--wait-timeout"))).toMatch(/--wait-timeout .* is not valid/);
  });
});

describe("parseLabels", () => {
  it("merges repeated and comma-separated pairs", () => {
    expect(parseLabels(["app=web", "tier=db,env=prod", "empty="])).toEqual({
      app: "web",
      tier: "db",
      env: "prod",
      empty: "",
    });
  });

  it("refuses pairs without a key and invalid keys", () => {
    expect(usage(() => parseLabels(["=x"]))).toMatch(/key=value/);
    expect(usage(() => parseLabels(["Bad Key=x"]))).toMatch(/label key "Bad Key" is not valid/);
  });
});

describe("parsePoolId", () => {
  it("wants HOST/POOL with valid names", () => {
    expect(parsePoolId("node1/default")).toBe("node1/default");
    expect(usage(() => parsePoolId("node1"))).toMatch(/HOST\/POOL/);
    expect(usage(() => parsePoolId("node1/a/b"))).toMatch(/HOST\/POOL/);
    expect(usage(() => parsePoolId("node1/.."))).toMatch(/pool name "\.\." is not valid/);
  });
});

describe("parseEnumList and parseUint", () => {
  it("reads kinds without duplicates", () => {
    expect(parseEnumList(PoolKindSchema, ["dir,lvm", "DIR"], "--kind")).toEqual([PoolKind.DIR, PoolKind.LVM]);
    expect(usage(() => parseEnumList(PoolKindSchema, ["unspecified"], "--kind"))).toMatch(/use one of/);
  });

  it("reads whole numbers", () => {
    expect(parseUint("3", "--numa-node")).toBe(3);
    expect(usage(() => parseUint("-1", "--numa-node"))).toMatch(/whole number/);
    expect(usage(() => parseUint("1.5", "--numa-node"))).toMatch(/whole number/);
  });
});

describe("normalizeServerUrl", () => {
  it.each([
    ["http://127.0.0.1:7480", "http://127.0.0.1:7480"],
    ["http://127.0.0.1:7480/", "http://127.0.0.1:7480"],
    ["127.0.0.1:7480", "http://127.0.0.1:7480"],
    ["localhost:7480", "http://localhost:7480"],
    ["controller.example:443", "http://controller.example:443"],
    ["https://controller.example", "https://controller.example"],
    ["[::1]:7480", "http://[::1]:7480"],
  ])("%s → %s", (input, url) => {
    expect(normalizeServerUrl(input)).toBe(url);
  });

  it("refuses other schemes and garbage", () => {
    expect(usage(() => normalizeServerUrl("grpc://x:1"))).toMatch(/http:\/\//);
    expect(usage(() => normalizeServerUrl("http://"))).toMatch(/not valid|no host/);
    expect(usage(() => normalizeServerUrl(" "))).toMatch(/empty/);
  });
});
