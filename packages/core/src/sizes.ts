import { invalidArgument } from "./errors.js";

const KiB = 1024n;
const UNITS: Record<string, bigint> = {
  "": 1n,
  b: 1n,
  k: KiB,
  kib: KiB,
  m: KiB ** 2n,
  mib: KiB ** 2n,
  g: KiB ** 3n,
  gib: KiB ** 3n,
  t: KiB ** 4n,
  tib: KiB ** 4n,
  p: KiB ** 5n,
  pib: KiB ** 5n,
  kb: 1000n,
  mb: 1000n ** 2n,
  gb: 1000n ** 3n,
  tb: 1000n ** 4n,
  pb: 1000n ** 5n,
};

/** The largest volume accepted: 1 PiB. Anything above is a typo, not a disk. */
export const MAX_VOLUME_SIZE = KiB ** 5n;

/**
 * Parses a size as virsh does: `k`/`K`/`KiB` = 1024 (and M, G, T, P likewise), `KB`/`MB`/`GB`/`TB` = powers of
 * 1000, a bare number is bytes. Decimals are allowed with a unit (`1.5G`) and must land on a whole byte.
 */
export function parseSize(input: string): bigint {
  const text = input.trim();
  const m = /^(\d+)(?:\.(\d+))?\s*([A-Za-z]*)$/.exec(text);
  if (!m)
    throw invalidArgument(
      `size ${JSON.stringify(input)} is not valid: write it like 10G, 512M, 1.5T or 1073741824`,
    );
  const [, whole, frac = "", unitRaw = ""] = m;
  const unit = unitRaw.length <= 1 ? unitRaw.toLowerCase() : unitRaw.toLowerCase();
  // Only the decimal forms are case-sensitive in virsh's sense: KB/MB/GB/TB; "kb" is treated the same.
  const factor = UNITS[unit];
  if (factor === undefined) {
    throw invalidArgument(
      `size ${JSON.stringify(input)} has an unknown unit ${JSON.stringify(unitRaw)}: use K, M, G, T (binary) or KB, MB, GB, TB (decimal)`,
    );
  }
  const scale = 10n ** BigInt(frac.length);
  const numerator = (BigInt(whole!) * scale + BigInt(frac || "0")) * factor;
  if (numerator % scale !== 0n)
    throw invalidArgument(`size ${JSON.stringify(input)} is not a whole number of bytes`);
  return numerator / scale;
}

/** Formats bytes with binary units, as people read them: `10 GiB`, `1.5 MiB`, `512 B`. */
export function formatSize(bytes: bigint | number): string {
  const b = BigInt(bytes);
  const names = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
  let unit = 0;
  let div = 1n;
  while (unit < names.length - 1 && b >= div * 1024n) {
    div *= 1024n;
    unit++;
  }
  if (unit === 0) return `${b} B`;
  const whole = b / div;
  const tenths = ((b % div) * 10n + div / 2n) / div;
  if (tenths === 0n) return `${whole} ${names[unit]}`;
  if (tenths === 10n) return `${whole + 1n} ${names[unit]}`;
  return `${whole}.${tenths} ${names[unit]}`;
}

/** Validates a requested volume size: not zero, not absurd, a multiple of 512 bytes (a sector). */
export function validateVolumeSize(size: bigint, field = "size"): bigint {
  if (size <= 0n) throw invalidArgument(`${field} must be greater than zero`, { field });
  if (size > MAX_VOLUME_SIZE) {
    throw invalidArgument(
      `${field} ${formatSize(size)} is larger than the maximum of ${formatSize(MAX_VOLUME_SIZE)}`,
      { field },
    );
  }
  if (size % 512n !== 0n)
    throw invalidArgument(`${field} must be a multiple of 512 bytes (got ${size})`, { field });
  return size;
}
