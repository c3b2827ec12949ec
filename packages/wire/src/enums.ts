import type { DescEnum } from "@bufbuild/protobuf";
import type { GenEnum } from "@bufbuild/protobuf/codegenv2";
import {
  COMPRESSION_TYPES,
  EXPORT_KINDS,
  FINDING_KINDS,
  HOST_STATES,
  invalidArgument,
  OPERATION_KINDS,
  OPERATION_STATES,
  POOL_KINDS,
  PREALLOCATIONS,
  SNAPSHOT_STATES,
  VOLUME_FORMATS,
  VOLUME_STATES,
  WIPE_MODES,
} from "@stowage/core";
import {
  CompressionTypeSchema,
  ExportKindSchema,
  FindingKindSchema,
  HostStateSchema,
  OperationKindSchema,
  OperationStateSchema,
  PoolKindSchema,
  PreallocationSchema,
  SnapshotStateSchema,
  VolumeFormatSchema,
  VolumeStateSchema,
  WipeModeSchema,
} from "@stowage/proto";

/** A proto enum and core's list of the same names, both ways. */
export interface EnumCodec<D extends string, W extends number> {
  readonly schema: DescEnum;
  /** Core's list, in its order. */
  readonly names: readonly D[];
  wire(name: D): W;
  /** The domain name of a wire value; undefined for UNSPECIFIED and for numbers this build does not know. */
  domain(value: number): D | undefined;
  /** Like `domain`, but a known name is required: UNSPECIFIED or an unknown number is INVALID_ARGUMENT. */
  require(value: number, field: string): D;
  /** UNSPECIFIED is undefined (the field was not set); an unknown number is INVALID_ARGUMENT. */
  optional(value: number, field: string): D | undefined;
}

/** "PoolKind" as ["Pool", "Kind"]. */
function words(typeName: string): string[] {
  return typeName.split(/(?<=[a-z0-9])(?=[A-Z])/);
}

/**
 * The domain name of an enum value by the proto naming convention (buf lint's ENUM_VALUE_PREFIX): the value
 * minus the enum's prefix, lower-cased. `POOL_KIND_LVMTHIN` of `PoolKind` is "lvmthin".
 */
export function wireValueName(schema: DescEnum, valueName: string): string {
  const prefix = `${words(schema.name).join("_").toUpperCase()}_`;
  return valueName.startsWith(prefix)
    ? valueName.slice(prefix.length).toLowerCase()
    : valueName.toLowerCase();
}

/** One codec per enum, built from the generated descriptor, so adding a value to the proto needs no table here. */
export function enumCodec<D extends string, W extends number>(
  schema: GenEnum<W>,
  names: readonly D[],
): EnumCodec<D, W> {
  const known = new Set<string>(names);
  const toWire = new Map<D, W>();
  const toDomain = new Map<number, D>();
  for (const v of schema.values) {
    if (v.number === 0) continue;
    const name = wireValueName(schema, v.name);
    if (!known.has(name)) continue;
    toWire.set(name as D, v.number as W);
    toDomain.set(v.number, name as D);
  }
  // "pool kind", "volume format": what the messages call a value of this enum.
  const what = words(schema.name).join(" ").toLowerCase();
  const choices = names.join(", ");
  const decode = (value: number, field: string): D => {
    const d = toDomain.get(value);
    if (d === undefined)
      throw invalidArgument(`${what} ${value} is not known: use one of ${choices}`, { field });
    return d;
  };
  return {
    schema,
    names,
    wire(name) {
      const w = toWire.get(name);
      if (w === undefined) throw new Error(`${schema.typeName} has no value for ${JSON.stringify(name)}`);
      return w;
    },
    domain: (value) => toDomain.get(value),
    require(value, field) {
      if (value === 0) throw invalidArgument(`${what} is required: use one of ${choices}`, { field });
      return decode(value, field);
    },
    optional: (value, field) => (value === 0 ? undefined : decode(value, field)),
  };
}

export const poolKinds = enumCodec(PoolKindSchema, POOL_KINDS);
export const formats = enumCodec(VolumeFormatSchema, VOLUME_FORMATS);
export const volumeStates = enumCodec(VolumeStateSchema, VOLUME_STATES);
export const snapshotStates = enumCodec(SnapshotStateSchema, SNAPSHOT_STATES);
export const operationKinds = enumCodec(OperationKindSchema, OPERATION_KINDS);
export const operationStates = enumCodec(OperationStateSchema, OPERATION_STATES);
export const hostStates = enumCodec(HostStateSchema, HOST_STATES);
export const preallocations = enumCodec(PreallocationSchema, PREALLOCATIONS);
export const compressionTypes = enumCodec(CompressionTypeSchema, COMPRESSION_TYPES);
export const wipeModes = enumCodec(WipeModeSchema, WIPE_MODES);
export const exportKinds = enumCodec(ExportKindSchema, EXPORT_KINDS);
export const findingKinds = enumCodec(FindingKindSchema, FINDING_KINDS);

/** Every codec whose core list must match its proto enum. */
export const WIRE_ENUMS: readonly EnumCodec<string, number>[] = [
  poolKinds,
  formats,
  volumeStates,
  snapshotStates,
  operationKinds,
  operationStates,
  hostStates,
  preallocations,
  compressionTypes,
  wipeModes,
  exportKinds,
  findingKinds,
];

/** Where a codec's proto enum and core's list disagree, in words (empty when they agree). */
export function enumMismatches(codec: EnumCodec<string, number>): string[] {
  const wire = codec.schema.values
    .filter((v) => v.number !== 0)
    .map((v) => wireValueName(codec.schema, v.name));
  const core = new Set(codec.names);
  const out = wire.filter((n) => !core.has(n)).map((n) => `${codec.schema.typeName} has ${n}, core does not`);
  const inWire = new Set(wire);
  for (const n of codec.names) {
    if (!inWire.has(n)) out.push(`core has ${n}, ${codec.schema.typeName} does not`);
  }
  return out;
}

/**
 * Throws when any proto enum and core's list of the same names disagree, so a value added on one side only
 * stops a process at start-up instead of turning into undefined on a live path. Runs when this module loads.
 */
export function checkWireEnums(codecs: readonly EnumCodec<string, number>[] = WIRE_ENUMS): void {
  const problems = codecs.flatMap(enumMismatches);
  if (problems.length > 0) {
    throw new Error(`wire enums and core's lists disagree: ${problems.join("; ")}`);
  }
}
