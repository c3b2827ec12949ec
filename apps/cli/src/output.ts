import type { DescEnum, DescField, DescMessage, MessageShape } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { formatSize } from "@stowage/core";

export const OUTPUT_FORMATS = ["table", "wide", "json"] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** A JSON value as printed by `-o json`. */
export type Plain = string | number | boolean | null | Plain[] | { [key: string]: Plain };

/** The lowercase name of an enum value without its prefix: VOLUME_STATE_AVAILABLE → "available". */
export function enumName(schema: DescEnum, value: number): string {
  const v = schema.value[value];
  return v ? v.localName.toLowerCase() : String(value);
}

/** The names a user may type for an enum, without the unspecified zero value. */
export function enumChoices(schema: DescEnum): string[] {
  return schema.values.filter((v) => v.number !== 0).map((v) => v.localName.toLowerCase());
}

function scalarToPlain(value: unknown): Plain {
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return Number.isFinite(value) ? value : String(value);
  if (value instanceof Uint8Array) return Buffer.from(value).toString("base64");
  return value as Plain;
}

function singleToPlain(
  field: { enum?: DescEnum | undefined; message?: DescMessage | undefined },
  value: unknown,
): Plain {
  if (field.enum) return enumName(field.enum, value as number);
  if (field.message) return toPlain(field.message, value as MessageShape<DescMessage>);
  return scalarToPlain(value);
}

function fieldToPlain(field: DescField, value: unknown): Plain | undefined {
  if (value === undefined) return undefined;
  switch (field.fieldKind) {
    case "list":
      return (value as unknown[]).map((v) => singleToPlain(field, v));
    case "map": {
      const out: Record<string, Plain> = {};
      const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b));
      for (const [k, v] of entries) out[k] = singleToPlain(field, v);
      return out;
    }
    case "enum":
      return enumName(field.enum, value as number);
    case "message":
      return toPlain(field.message, value as MessageShape<DescMessage>);
    default:
      return scalarToPlain(value);
  }
}

/**
 * A message as plain JSON for scripts: proto3 JSON field names (camelCase), every field present (unset optional
 * and message fields omitted), 64-bit integers as strings, enums as lowercase names without prefix, timestamps as
 * ISO 8601 strings.
 */
export function toPlain<D extends DescMessage>(schema: D, message: MessageShape<D>): Plain {
  if (schema.typeName === "google.protobuf.Timestamp") {
    return timestampDate(message as unknown as Timestamp).toISOString();
  }
  const record = message as unknown as Record<string, unknown>;
  const out: Record<string, Plain> = {};
  for (const field of schema.fields) {
    let value: unknown;
    if (field.oneof) {
      const oneof = record[field.oneof.localName] as { case?: string; value?: unknown } | undefined;
      value = oneof?.case === field.localName ? oneof.value : undefined;
    } else {
      value = record[field.localName];
    }
    const plain = fieldToPlain(field, value);
    if (plain !== undefined) out[field.jsonName] = plain;
  }
  return out;
}

export function formatJson(value: Plain): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** Renders aligned columns, kubectl style: headers in capitals, two spaces between columns. */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("   ")
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join("\n")}\n`;
}

/** Renders `Key:  value` lines with the values aligned; rows with an undefined value are left out. */
export function renderDetails(rows: readonly (readonly [string, string | undefined])[]): string {
  const present = rows.filter((r): r is readonly [string, string] => r[1] !== undefined);
  const width = Math.max(...present.map(([k]) => k.length + 1));
  return `${present.map(([k, v]) => `${`${k}:`.padEnd(width)}  ${v}`.trimEnd()).join("\n")}\n`;
}

export function tsDate(ts: Timestamp | undefined): Date | undefined {
  return ts ? timestampDate(ts) : undefined;
}

/** "12s ago", "5m ago", "3h ago", "2d ago" (or "in 5m" for times ahead of the clock). */
export function relativeTime(date: Date | undefined, now: Date): string {
  if (!date) return "-";
  const diff = Math.round((now.getTime() - date.getTime()) / 1000);
  const abs = Math.abs(diff);
  let text: string;
  if (abs < 1) return "just now";
  if (abs < 120) text = `${abs}s`;
  else if (abs < 120 * 60) text = `${Math.floor(abs / 60)}m`;
  else if (abs < 48 * 3600) text = `${Math.floor(abs / 3600)}h`;
  else text = `${Math.floor(abs / 86400)}d`;
  return diff >= 0 ? `${text} ago` : `in ${text}`;
}

/** Relative in tables, ISO 8601 in wide output. */
export function formatTime(ts: Timestamp | undefined, now: Date, format: OutputFormat): string {
  const date = tsDate(ts);
  if (!date) return "-";
  return format === "wide" ? date.toISOString() : relativeTime(date, now);
}

/** ISO 8601 and relative, for detail views: "2025-01-02T03:04:05.000Z (5m ago)". */
export function formatTimeLong(ts: Timestamp | undefined, now: Date): string | undefined {
  const date = tsDate(ts);
  return date ? `${date.toISOString()} (${relativeTime(date, now)})` : undefined;
}

export function formatLabels(labels: Record<string, string>): string {
  const entries = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b));
  return entries.length === 0 ? "-" : entries.map(([k, v]) => `${k}=${v}`).join(",");
}

export function orDash(value: string | number | undefined | null): string {
  return value === undefined || value === null || value === "" ? "-" : String(value);
}

export function formatBytes(bytes: bigint | undefined): string {
  return bytes === undefined ? "-" : formatSize(bytes);
}

export function yesNo(value: boolean): string {
  return value ? "yes" : "no";
}

/** A duration in milliseconds for people: "850ms", "1.2s", "2m5s". */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = s % 60;
  return h > 0 ? `${h}h${m}m` : `${m}m${rest > 0 ? `${rest}s` : ""}`;
}
