import type { DescEnum } from "@bufbuild/protobuf";
import {
  isQcow2ClusterSize,
  isValidName,
  parseSize,
  StowageError,
  validateLabels,
  validateVolumeSize,
} from "@stowage/core";
import { usageError } from "./errors.js";
import { enumChoices } from "./output.js";

function rethrowAsUsage(err: unknown, prefix?: string): never {
  if (err instanceof StowageError) throw usageError(prefix ? `${prefix}: ${err.message}` : err.message);
  throw err;
}

/** A volume size as people write it (virsh units), checked like the controller checks it. */
export function parseVolumeSize(input: string, option = "--size"): bigint {
  try {
    return validateVolumeSize(parseSize(input), option);
  } catch (err) {
    rethrowAsUsage(err, option);
  }
}

/** A qcow2 cluster size: a power of two from 512 B to 2 MiB, as qemu-img accepts. */
export function parseClusterSize(input: string): bigint {
  let bytes: bigint;
  try {
    bytes = parseSize(input);
  } catch (err) {
    rethrowAsUsage(err, "--cluster-size");
  }
  if (!isQcow2ClusterSize(Number(bytes))) {
    throw usageError(
      `--cluster-size ${JSON.stringify(input)} is not valid: use a power of two from 512 to 2M, like 64K`,
    );
  }
  return bytes;
}

/** A name (volume, host, pool): invariant 4 of docs/architecture.md, checked here so bad input never leaves the machine. */
export function parseName(what: string, value: string): string {
  if (value === "") throw usageError(`${what} is required`);
  if (!isValidName(value)) {
    throw usageError(
      `${what} ${JSON.stringify(value.slice(0, 80))} is not valid: use 1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, and no '..'`,
    );
  }
  return value;
}

/** A pool id, "<host>/<pool>". */
export function parsePoolId(value: string, what = "pool"): string {
  const parts = value.split("/");
  if (parts.length !== 2) {
    throw usageError(
      `${what} ${JSON.stringify(value)} is not valid: write it as HOST/POOL, like node1/default`,
    );
  }
  parseName(`${what} host`, parts[0]!);
  parseName(`${what} name`, parts[1]!);
  return value;
}

/** A name prefix for filtering: the characters a name may hold. */
export function parsePrefix(value: string): string {
  if (!/^[a-z0-9._-]{0,63}$/.test(value)) {
    throw usageError(
      `--prefix ${JSON.stringify(value)} is not valid: names only hold a-z, 0-9, '.', '_' and '-'`,
    );
  }
  return value;
}

/** `k=v` pairs from repeated --label options (each may also hold several, comma-separated). */
export function parseLabels(values: readonly string[], option = "--label"): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const item of values.flatMap((v) => v.split(","))) {
    const trimmed = item.trim();
    if (trimmed === "") continue;
    const eq = trimmed.indexOf("=");
    if (eq <= 0) throw usageError(`${option} ${JSON.stringify(item)} is not valid: write it as key=value`);
    labels[trimmed.slice(0, eq)] = trimmed.slice(eq + 1);
  }
  try {
    return validateLabels(labels);
  } catch (err) {
    rethrowAsUsage(err, option);
  }
}

/** An enum value by its lowercase name ("qcow2", "lvmthin"); the zero value is never accepted. */
export function parseEnum<T extends number>(schema: DescEnum, input: string, option: string): T {
  const wanted = input.trim().toLowerCase();
  const value = schema.values.find((v) => v.number !== 0 && v.localName.toLowerCase() === wanted);
  if (!value) {
    throw usageError(
      `${option} ${JSON.stringify(input)} is not valid: use one of ${enumChoices(schema).join(", ")}`,
    );
  }
  return value.number as T;
}

/** Several enum values from repeated and/or comma-separated options. */
export function parseEnumList<T extends number>(
  schema: DescEnum,
  inputs: readonly string[],
  option: string,
): T[] {
  const out: T[] = [];
  for (const item of inputs.flatMap((v) => v.split(","))) {
    if (item.trim() === "") continue;
    const v = parseEnum<T>(schema, item, option);
    if (!out.includes(v)) out.push(v);
  }
  return out;
}

/** A non-negative integer such as a NUMA node. */
export function parseUint(input: string, option: string, max = 0xffff_ffff): number {
  if (!/^\d+$/.test(input.trim()) || Number(input) > max) {
    throw usageError(`${option} ${JSON.stringify(input)} is not valid: use a whole number from 0 to ${max}`);
  }
  return Number(input);
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** A duration like 500ms, 30s, 5m, 1h30m, or a bare number of seconds. Zero or less is refused. */
export function parseDuration(input: string, option: string): number {
  const text = input.trim().toLowerCase();
  let ms = 0;
  if (/^\d+(\.\d+)?$/.test(text)) {
    ms = Number(text) * 1000;
  } else {
    const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
    let consumed = 0;
    for (let m = re.exec(text); m !== null; m = re.exec(text)) {
      ms += Number(m[1]) * DURATION_UNITS[m[2]!]!;
      consumed = re.lastIndex;
    }
    if (consumed !== text.length || text === "") ms = Number.NaN;
  }
  if (!Number.isFinite(ms) || ms <= 0) {
    throw usageError(`${option} ${JSON.stringify(input)} is not valid: write a duration like 30s, 5m or 1h`);
  }
  return Math.round(ms);
}
