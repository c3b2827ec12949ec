import type { DescMessage, Message } from "@bufbuild/protobuf";
import type { ReflectList, ReflectMap, ReflectMessage } from "@bufbuild/protobuf/reflect";
import { reflect } from "@bufbuild/protobuf/reflect";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import {
  invalidArgument,
  isId,
  type PoolKind,
  type Qcow2Options,
  type VolumeFormat,
  validateQcow2 as validateImageOptions,
  validateLabels,
  validateName,
  validateVolumeSize,
} from "@stowage/core";
import type { VolumeRequirements, PlacementConstraints as WireConstraints } from "@stowage/proto";
import { AntiAffinityScope, PlacementStrategy } from "@stowage/proto";
import type { PlacementConstraints, PlacementRequest } from "@stowage/scheduler";
import { formats, poolKinds } from "@stowage/wire";

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function validateRequestId(id: string): string | null {
  if (id === "") return null;
  if (!REQUEST_ID.test(id))
    throw invalidArgument("request_id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'", {
      field: "request_id",
    });
  return id;
}

export function validatePoolRef(ref: string, field = "pool"): string {
  const m = /^([^/]+)\/([^/]+)$/.exec(ref);
  if (!m)
    throw invalidArgument(
      `${field} ${JSON.stringify(ref.slice(0, 80))} is not valid: write it as HOST/POOL, for example node1/default`,
      { field },
    );
  validateName(`${field} host`, m[1]!);
  validateName(`${field} name`, m[2]!);
  return ref;
}

/** Turns wire constraints into the scheduler's, refusing anything malformed. */
export function constraintsFromWire(c: WireConstraints | undefined): PlacementConstraints {
  if (!c) return {};
  const out: PlacementConstraints = {};
  if (c.poolKinds.length) {
    out.poolKinds = c.poolKinds.map((k) => poolKinds.require(k, "constraints.pool_kinds"));
  }
  if (c.hostId) out.hostId = validateName("host", c.hostId);
  if (c.poolId) out.poolId = validatePoolRef(c.poolId);
  if (c.zone) out.zone = validateName("zone", c.zone);
  if (Object.keys(c.poolLabels).length) out.poolLabels = validateLabels(c.poolLabels);
  if (c.numa && (c.numa.hostId || c.numa.numaNode !== undefined)) {
    if (!c.numa.hostId)
      throw invalidArgument(
        "numa.host_id is required with numa.numa_node: the node is a node of the VM's host",
        { field: "constraints.numa" },
      );
    validateName("numa host", c.numa.hostId);
    if (c.numa.numaNode !== undefined && c.numa.numaNode > 1023)
      throw invalidArgument("numa node must be 0..1023", { field: "constraints.numa" });
    out.numa = {
      hostId: c.numa.hostId,
      required: c.numa.required,
      ...(c.numa.numaNode === undefined ? {} : { node: c.numa.numaNode }),
    };
  }
  if (c.antiAffinityGroup) {
    out.antiAffinityGroup = validateName("anti-affinity group", c.antiAffinityGroup);
    out.antiAffinityScope = c.antiAffinityScope === AntiAffinityScope.ZONE ? "zone" : "host";
  }
  if (!(c.antiAffinityScope in AntiAffinityScope))
    throw invalidArgument(
      `anti_affinity_scope ${c.antiAffinityScope} is not a known value: use HOST or ZONE (or leave it unset)`,
      { field: "constraints.anti_affinity_scope" },
    );
  if (!(c.strategy in PlacementStrategy))
    throw invalidArgument(
      `strategy ${c.strategy} is not a known value: use SPREAD or BINPACK (or leave it unset)`,
      { field: "constraints.strategy" },
    );
  if (c.strategy === PlacementStrategy.BINPACK) out.strategy = "binpack";
  return out;
}

/** The default format: qcow2 when a file pool may take the volume, raw when only block pools may. */
export function defaultFormat(kinds: readonly PoolKind[] | undefined): VolumeFormat {
  if (!kinds || kinds.length === 0 || kinds.includes("dir") || kinds.includes("netfs")) return "qcow2";
  return "raw";
}

/** The API sends qcow2 options for qcow2 volumes only; what they may hold is core's rule. */
export function validateQcow2(format: VolumeFormat, q: Qcow2Options): Qcow2Options {
  if (format === "qcow2") return validateImageOptions(format, q);
  if (Object.keys(q).length > 0)
    throw invalidArgument("qcow2 options were given for a raw volume: drop them or use --format qcow2", {
      field: "qcow2",
    });
  return {};
}

/** Validates what the scheduler needs to place one volume. */
export function placementRequestFromWire(v: VolumeRequirements | undefined): PlacementRequest {
  if (!v) throw invalidArgument("volume is required");
  const constraints = constraintsFromWire(v.constraints);
  const format = formats.optional(v.format, "format") ?? defaultFormat(constraints.poolKinds);
  return {
    name: v.name ? validateName("volume name", v.name) : "(dry run)",
    sizeBytes: validateVolumeSize(v.sizeBytes, "size_bytes"),
    format,
    constraints,
  };
}

/** A reference to a volume: its id or its name. */
export function validateVolumeRef(ref: string): { id?: string; name?: string } {
  if (ref === "") throw invalidArgument("volume is required: give its id or name", { field: "volume" });
  if (isId(ref, "vol")) return { id: ref };
  return { name: validateName("volume", ref) };
}

/**
 * PostgreSQL text cannot hold U+0000: a request string with one would fail in the database as INTERNAL
 * ("invalid byte sequence for encoding UTF8: 0x00") wherever no validator looked at it first (a list filter, an
 * operation id). Every string of every request, nested messages, lists and maps (keys too) included, is checked
 * here once, before any service code runs; the first one found is named.
 */
export function findNulString(desc: DescMessage, message: Message, path = ""): string | undefined {
  const m = reflect(desc, message as never);
  for (const f of desc.fields) {
    if (!m.isSet(f)) continue;
    const at = path ? `${path}.${f.name}` : f.name;
    switch (f.fieldKind) {
      case "scalar":
        if (typeof m.get(f) === "string" && (m.get(f) as string).includes("\u0000")) return at;
        break;
      case "message": {
        const inner = findNulString(f.message, (m.get(f) as ReflectMessage).message, at);
        if (inner) return inner;
        break;
      }
      case "list":
        for (const v of m.get(f) as ReflectList) {
          if (typeof v === "string" && v.includes("\u0000")) return at;
          if (f.listKind === "message") {
            const inner = findNulString(f.message, (v as ReflectMessage).message, at);
            if (inner) return inner;
          }
        }
        break;
      case "map":
        for (const [k, v] of m.get(f) as ReflectMap) {
          if (
            (typeof k === "string" && k.includes("\u0000")) ||
            (typeof v === "string" && v.includes("\u0000"))
          )
            return at;
          if (f.mapKind === "message") {
            const inner = findNulString(f.message, (v as ReflectMessage).message, at);
            if (inner) return inner;
          }
        }
        break;
    }
  }
  return undefined;
}

/** Refuses a unary or server-streaming request with a NUL character in any string (findNulString). */
export function createNulStringInterceptor(): Interceptor {
  const check = (desc: DescMessage, message: Message) => {
    const field = findNulString(desc, message);
    if (field)
      throw new ConnectError(
        `${field} contains a NUL character (U+0000), which no field may hold`,
        Code.InvalidArgument,
      );
  };
  return (next) => async (req) => {
    if (!req.stream) {
      check(req.method.input, req.message);
      return next(req);
    }
    // A server-streaming call's one request arrives as a stream: checked as the handler reads it.
    const input = req.message;
    async function* checked() {
      for await (const m of input) {
        check(req.method.input, m);
        yield m;
      }
    }
    return next({ ...req, message: checked() });
  };
}
