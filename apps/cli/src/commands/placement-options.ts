import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  type AntiAffinityScope,
  AntiAffinityScopeSchema,
  type PlacementConstraintsSchema,
  type PlacementStrategy,
  PlacementStrategySchema,
  type PoolKind,
  PoolKindSchema,
} from "@stowage/proto";
import type { Command, OptionValues } from "commander";
import { collect } from "../command-kit.js";
import { usageError } from "../errors.js";
import { enumChoices } from "../output.js";
import { parseEnum, parseEnumList, parseLabels, parseName, parsePoolId, parseUint } from "../parse.js";

/** The placement flags shared by `volume create` and `placement explain`. */
export function addPlacementOptions(cmd: Command): Command {
  return cmd
    .option("--pool <host/pool>", "place only in this pool")
    .option("--host <host>", "place only on this host")
    .option("--zone <zone>", "place only in this zone")
    .option(
      "--kind <kind>",
      `allowed pool kinds, repeatable or comma-separated: ${enumChoices(PoolKindSchema).join(", ")}`,
      collect,
    )
    .option("--pool-label <key=value>", "place only in pools with this label (repeatable)", collect)
    .option("--numa-host <host>", "the host of the VM that will use the volume")
    .option("--numa-node <n>", "the VM's NUMA node on --numa-host: prefer pools on that node")
    .option("--numa-required", "refuse pools on other NUMA nodes instead of only scoring them lower")
    .option("--anti-affinity <group>", "keep volumes of this group apart (on distinct hosts by default)")
    .option("--anti-affinity-scope <scope>", "how far apart: host or zone")
    .option("--strategy <strategy>", "spread (most free space, default) or binpack (fullest pool that fits)");
}

const ZONE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** PlacementConstraints from the placement flags, validated locally (exit 2 on bad input). */
export function placementConstraints(o: OptionValues): MessageInitShape<typeof PlacementConstraintsSchema> {
  const c: MessageInitShape<typeof PlacementConstraintsSchema> = {};
  if (o.pool !== undefined) c.poolId = parsePoolId(o.pool, "--pool");
  if (o.host !== undefined) c.hostId = parseName("--host", o.host);
  // --pool with --host of another host is not refused here: a shared pool (netfs) is reached from every host
  // attached to its share, and only the controller knows which those are.
  if (o.zone !== undefined) {
    if (!ZONE.test(o.zone)) throw usageError(`--zone ${JSON.stringify(o.zone)} is not a valid zone name`);
    c.zone = o.zone;
  }
  if (o.kind !== undefined) c.poolKinds = parseEnumList<PoolKind>(PoolKindSchema, o.kind, "--kind");
  if (o.poolLabel !== undefined) c.poolLabels = parseLabels(o.poolLabel, "--pool-label");
  if (o.numaNode !== undefined && o.numaHost === undefined) {
    throw usageError("--numa-node needs --numa-host: the NUMA node is a node of the VM's host");
  }
  if (o.numaRequired && o.numaNode === undefined) {
    throw usageError("--numa-required needs --numa-host and --numa-node");
  }
  if (o.numaHost !== undefined) {
    c.numa = {
      hostId: parseName("--numa-host", o.numaHost),
      required: Boolean(o.numaRequired),
      ...(o.numaNode !== undefined ? { numaNode: parseUint(o.numaNode, "--numa-node", 1023) } : {}),
    };
  }
  if (o.antiAffinity !== undefined) c.antiAffinityGroup = parseName("--anti-affinity", o.antiAffinity);
  if (o.antiAffinityScope !== undefined) {
    if (o.antiAffinity === undefined) throw usageError("--anti-affinity-scope needs --anti-affinity GROUP");
    c.antiAffinityScope = parseEnum<AntiAffinityScope>(
      AntiAffinityScopeSchema,
      o.antiAffinityScope,
      "--anti-affinity-scope",
    );
  }
  if (o.strategy !== undefined) {
    c.strategy = parseEnum<PlacementStrategy>(PlacementStrategySchema, o.strategy, "--strategy");
  }
  return c;
}

export const PLACEMENT_HELP = `
Placement flags narrow where the scheduler may put the volume; without them every healthy, schedulable
pool that supports the format and has the capacity is a candidate, and the best score wins.`;
