import {
  CompressionTypeSchema,
  type ErrorDetail,
  type ExplainPlacementResponse,
  type Finding,
  FindingKindSchema,
  type Host,
  HostState,
  HostStateSchema,
  type Operation,
  OperationKindSchema,
  OperationStateSchema,
  type Placement,
  type Pool,
  PoolKindSchema,
  PreallocationSchema,
  type Qcow2Options,
  type Volume,
  VolumeFormatSchema,
  VolumeStateSchema,
} from "@stowage/proto";
import {
  enumName,
  formatBytes,
  formatLabels,
  formatTime,
  formatTimeLong,
  type OutputFormat,
  orDash,
  renderDetails,
  renderTable,
  yesNo,
} from "./output.js";

/** How tables and detail views are rendered: wide or not, and the clock for relative times. */
export interface ViewOptions {
  format: OutputFormat;
  now: Date;
}

const unspecified = (name: string) => (name === "unspecified" ? "-" : name);

export function formatError(error: ErrorDetail | undefined): string | undefined {
  if (!error || (!error.code && !error.message)) return undefined;
  let text = [error.code, error.message].filter(Boolean).join(": ");
  if (error.tool) {
    const exit = error.exitCode !== undefined ? ` exited ${error.exitCode}` : "";
    text += ` (${error.tool}${exit}${error.timedOut ? ", timed out" : ""}${error.stderr ? `: ${error.stderr.trim().split("\n").pop()}` : ""})`;
  }
  return text;
}

// Hosts

export function hostTable(hosts: readonly Host[], o: ViewOptions): string {
  const wide = o.format === "wide";
  const headers = [
    "NAME",
    "STATE",
    "SCHEDULABLE",
    "ZONE",
    "CPUS",
    "MEMORY",
    "NUMA",
    "POOLS",
    "VOLUMES",
    "HEARTBEAT",
  ];
  if (wide) headers.push("AGENT", "REGISTERED", "LABELS");
  const rows = hosts.map((h) => {
    const row = [
      h.id,
      unspecified(enumName(HostStateSchema, h.state)),
      yesNo(h.schedulable),
      orDash(h.zone),
      String(h.cpuCount),
      formatBytes(h.memoryBytes),
      String(h.numaNodes.length),
      String(h.poolCount),
      String(h.volumeCount),
      formatTime(h.lastHeartbeatAt, o.now, o.format),
    ];
    if (wide)
      row.push(orDash(h.agentVersion), formatTime(h.registeredAt, o.now, o.format), formatLabels(h.labels));
    return row;
  });
  return renderTable(headers, rows);
}

export function hostDetails(h: Host, o: ViewOptions): string {
  let text = renderDetails([
    ["Name", h.id],
    ["State", unspecified(enumName(HostStateSchema, h.state))],
    ["Schedulable", h.schedulable ? "yes" : "no (cordoned: no new volumes are placed here)"],
    ["Zone", orDash(h.zone)],
    ["Labels", formatLabels(h.labels)],
    ["CPUs", String(h.cpuCount)],
    ["Memory", formatBytes(h.memoryBytes)],
    ["Agent", orDash(h.agentVersion)],
    ["Initiator", h.initiatorName || undefined],
    ["Pools", String(h.poolCount)],
    ["Volumes", String(h.volumeCount)],
    ["Registered", formatTimeLong(h.registeredAt, o.now) ?? "-"],
    ["Last heartbeat", formatTimeLong(h.lastHeartbeatAt, o.now) ?? "-"],
  ]);
  if (h.state === HostState.DOWN) text += "\nThe host missed its heartbeats: check stowage-agent on it.\n";
  if (h.numaNodes.length > 0) {
    text += `\nNUMA nodes:\n${renderTable(
      ["NODE", "CPUS", "MEMORY", "DISTANCES"],
      h.numaNodes.map((n) => [
        String(n.id),
        orDash(n.cpuList),
        formatBytes(n.memoryBytes),
        orDash(n.distances.join(" ")),
      ]),
    )
      .split("\n")
      .map((l) => (l ? `  ${l}` : l))
      .join("\n")}`;
  }
  return text;
}

// Pools

function poolStatus(p: Pool): string {
  if (!p.healthy) return "unhealthy";
  return p.draining ? "draining" : "healthy";
}

function percent(v: number | undefined): string {
  return v === undefined ? "-" : `${v.toFixed(1)}%`;
}

/** The hosts a shared pool is attached to besides its owner, comma-separated ("-" for none). */
function attachedHosts(p: Pool): string {
  return orDash(p.attachedHostIds.join(","));
}

/**
 * The pools as a table. A shared pool is one row whatever the number of hosts that reach it: the ATTACHED
 * column (shown when a listed pool has attached hosts, and always with `-o wide`) names the others.
 */
export function poolTable(pools: readonly Pool[], o: ViewOptions): string {
  const wide = o.format === "wide";
  const attached = wide || pools.some((p) => p.attachedHostIds.length > 0);
  const headers = ["POOL", "KIND", "STATUS", "NUMA", "SIZE", "FREE", "PROVISIONED", "RESERVED", "VOLUMES"];
  if (attached) headers.push("ATTACHED");
  if (wide) headers.push("ZONE", "OVERCOMMIT", "FORMATS", "SHARED", "DATA%", "LABELS");
  const rows = pools.map((p) => {
    const c = p.capacity;
    const row = [
      p.id,
      unspecified(enumName(PoolKindSchema, p.kind)),
      poolStatus(p),
      orDash(p.numaNode),
      formatBytes(c?.totalBytes),
      formatBytes(c?.freeBytes),
      formatBytes(c?.provisionedBytes),
      formatBytes(c?.reservedBytes),
      String(p.volumeCount),
    ];
    if (attached) row.push(attachedHosts(p));
    if (wide) {
      row.push(
        orDash(p.zone),
        `${p.overcommitRatio || 1}x`,
        orDash(p.formats.map((f) => enumName(VolumeFormatSchema, f)).join(",")),
        yesNo(p.shared),
        percent(c?.dataPercent),
        formatLabels(p.labels),
      );
    }
    return row;
  });
  return renderTable(headers, rows);
}

export function poolDetails(p: Pool, o: ViewOptions): string {
  const c = p.capacity;
  return renderDetails([
    ["Pool", p.id],
    ["Name", p.name],
    ["Host", p.hostId],
    ["Kind", unspecified(enumName(PoolKindSchema, p.kind))],
    ["Zone", orDash(p.zone)],
    ["Status", p.healthy ? "healthy" : `unhealthy${p.healthMessage ? `: ${p.healthMessage}` : ""}`],
    ["Draining", p.draining ? "yes (no new volumes are placed here)" : "no"],
    ["Shared", yesNo(p.shared)],
    ["Share", p.share || undefined],
    ["Attached hosts", p.shared ? attachedHosts(p) : undefined],
    ["NUMA node", orDash(p.numaNode)],
    ["Formats", orDash(p.formats.map((f) => enumName(VolumeFormatSchema, f)).join(", "))],
    ["Overcommit", `${p.overcommitRatio || 1}x`],
    ["Total", formatBytes(c?.totalBytes)],
    ["Used", formatBytes(c?.usedBytes)],
    ["Free", formatBytes(c?.freeBytes)],
    ["Provisioned", formatBytes(c?.provisionedBytes)],
    ["Reserved", formatBytes(c?.reservedBytes)],
    ["Data", c?.dataPercent === undefined ? undefined : percent(c.dataPercent)],
    ["Metadata", c?.metadataPercent === undefined ? undefined : percent(c.metadataPercent)],
    ["Volumes", String(p.volumeCount)],
    ["Labels", formatLabels(p.labels)],
    ["Updated", formatTimeLong(p.updatedAt, o.now) ?? "-"],
  ]);
}

// Volumes

export function formatQcow2(q: Qcow2Options | undefined): string | undefined {
  if (!q) return undefined;
  const parts: string[] = [];
  if (q.clusterSizeBytes !== undefined) parts.push(`cluster ${formatBytes(q.clusterSizeBytes)}`);
  if (q.preallocation) parts.push(`preallocation ${enumName(PreallocationSchema, q.preallocation)}`);
  if (q.lazyRefcounts !== undefined) parts.push(`lazy refcounts ${q.lazyRefcounts ? "on" : "off"}`);
  if (q.compressionType) parts.push(`compression ${enumName(CompressionTypeSchema, q.compressionType)}`);
  if (q.extendedL2 !== undefined) parts.push(`extended L2 ${q.extendedL2 ? "on" : "off"}`);
  return parts.length ? parts.join(", ") : undefined;
}

export function volumeTable(volumes: readonly Volume[], o: ViewOptions): string {
  const wide = o.format === "wide";
  const headers = ["NAME", "SIZE", "FORMAT", "STATE", "POOL", "NUMA", "AGE"];
  if (wide) headers.push("ID", "ALLOCATED", "LABELS", "OPERATION");
  const rows = volumes.map((v) => {
    const row = [
      v.name,
      formatBytes(v.sizeBytes),
      unspecified(enumName(VolumeFormatSchema, v.format)),
      unspecified(enumName(VolumeStateSchema, v.state)),
      orDash(v.poolId),
      orDash(v.numaNode),
      formatTime(v.createdAt, o.now, o.format),
    ];
    if (wide) row.push(v.id, formatBytes(v.allocatedBytes), formatLabels(v.labels), orDash(v.operationId));
    return row;
  });
  return renderTable(headers, rows);
}

export function volumeDetails(v: Volume, o: ViewOptions): string {
  return renderDetails([
    ["Name", v.name],
    ["ID", v.id],
    ["State", unspecified(enumName(VolumeStateSchema, v.state))],
    ["Error", formatError(v.error)],
    ["Size", `${formatBytes(v.sizeBytes)} (${v.sizeBytes} bytes)`],
    ["Allocated", formatBytes(v.allocatedBytes)],
    ["Format", unspecified(enumName(VolumeFormatSchema, v.format))],
    ["qcow2", formatQcow2(v.qcow2)],
    ["Pool", orDash(v.poolId)],
    ["Host", orDash(v.hostId)],
    ["NUMA node", v.numaNode === undefined ? "-" : `${v.numaNode}${v.cpuSet ? ` (CPUs ${v.cpuSet})` : ""}`],
    ["Path", v.hostPath || undefined],
    ["Anti-affinity", v.antiAffinityGroup || undefined],
    ["Source", v.sourceVolumeId || undefined],
    ["Source snapshot", v.sourceSnapshotId || undefined],
    ["Labels", formatLabels(v.labels)],
    ["Operation", orDash(v.operationId)],
    ["Created", formatTimeLong(v.createdAt, o.now) ?? "-"],
    ["Updated", formatTimeLong(v.updatedAt, o.now) ?? "-"],
  ]);
}

// Findings

function quarantine(f: Finding): string {
  return f.quarantinedAt ? `yes (${f.quarantinedBy || "?"})` : "no";
}

export function findingTable(findings: readonly Finding[], o: ViewOptions): string {
  const wide = o.format === "wide";
  const headers = ["KIND", "HOST", "POOL", "SUBJECT", "SIZE", "FORMAT", "QUARANTINED", "LAST SEEN"];
  if (wide) headers.push("FIRST SEEN", "PATH", "REASON", "DETAIL");
  const rows = findings.map((f) => {
    const row = [
      unspecified(enumName(FindingKindSchema, f.kind)),
      f.hostId,
      orDash(f.poolId),
      f.subject,
      f.sizeBytes ? formatBytes(f.sizeBytes) : "-",
      unspecified(enumName(VolumeFormatSchema, f.format)),
      quarantine(f),
      formatTime(f.lastSeen, o.now, o.format),
    ];
    if (wide)
      row.push(
        formatTime(f.firstSeen, o.now, o.format),
        orDash(f.path),
        orDash(f.quarantineReason),
        orDash(f.detail),
      );
    return row;
  });
  return renderTable(headers, rows);
}

export function findingDetails(f: Finding, o: ViewOptions): string {
  return renderDetails([
    ["Kind", unspecified(enumName(FindingKindSchema, f.kind))],
    ["Subject", f.subject],
    ["Host", f.hostId],
    ["Pool", orDash(f.poolId)],
    ["Size", f.sizeBytes ? `${formatBytes(f.sizeBytes)} (${f.sizeBytes} bytes)` : undefined],
    ["Format", f.format ? enumName(VolumeFormatSchema, f.format) : undefined],
    ["Path", f.path || undefined],
    ["Detail", f.detail || undefined],
    [
      "Quarantined",
      f.quarantinedAt ? `${formatTimeLong(f.quarantinedAt, o.now)} by ${f.quarantinedBy}` : "no",
    ],
    ["Reason", f.quarantineReason || undefined],
    ["First seen", formatTimeLong(f.firstSeen, o.now) ?? "-"],
    ["Last seen", formatTimeLong(f.lastSeen, o.now) ?? "-"],
  ]);
}

// Operations

export function operationTable(ops: readonly Operation[], o: ViewOptions): string {
  const wide = o.format === "wide";
  const headers = ["ID", "KIND", "STATE", "HOST", "VOLUME", "ATTEMPTS", "AGE"];
  if (wide) headers.push("POOL", "PROGRESS", "FINISHED", "REQUESTED_BY", "ERROR");
  const rows = ops.map((op) => {
    const row = [
      op.id,
      unspecified(enumName(OperationKindSchema, op.kind)),
      unspecified(enumName(OperationStateSchema, op.state)),
      orDash(op.hostId),
      orDash(op.volumeId),
      String(op.attempts),
      formatTime(op.createdAt, o.now, o.format),
    ];
    if (wide) {
      row.push(
        orDash(op.poolId),
        op.progressPercent === undefined ? "-" : `${op.progressPercent}%`,
        formatTime(op.finishedAt, o.now, o.format),
        orDash(op.requestedBy),
        orDash(formatError(op.error)),
      );
    }
    return row;
  });
  return renderTable(headers, rows);
}

export function operationDetails(op: Operation, o: ViewOptions): string {
  return renderDetails([
    ["ID", op.id],
    ["Kind", unspecified(enumName(OperationKindSchema, op.kind))],
    ["State", unspecified(enumName(OperationStateSchema, op.state))],
    ["Error", formatError(op.error)],
    ["Progress", op.progressPercent === undefined ? undefined : `${op.progressPercent}%`],
    ["Host", orDash(op.hostId)],
    ["Pool", orDash(op.poolId)],
    ["Volume", orDash(op.volumeId)],
    ["Snapshot", op.snapshotId || undefined],
    ["Attempts", String(op.attempts)],
    ["Requested by", orDash(op.requestedBy)],
    ["Created", formatTimeLong(op.createdAt, o.now) ?? "-"],
    ["Updated", formatTimeLong(op.updatedAt, o.now) ?? "-"],
    ["Finished", formatTimeLong(op.finishedAt, o.now) ?? "-"],
  ]);
}

// Placement

function chosenLine(p: Placement): string {
  const numa =
    p.numaNode === undefined ? "" : `, NUMA node ${p.numaNode}${p.cpuSet ? ` (CPUs ${p.cpuSet})` : ""}`;
  return `${p.poolId} (host ${orDash(p.hostId)}${numa})`;
}

export function candidateTable(p: Placement, o: ViewOptions): string {
  const wide = o.format === "wide";
  const headers = ["POOL", "HOST", "FEASIBLE", "SCORE", "REFUSED_BY", "REASON"];
  if (wide) headers.splice(5, 0, "SCORES");
  const rows = p.candidates.map((c) => {
    const row = [
      c.poolId,
      orDash(c.hostId),
      yesNo(c.feasible),
      c.feasible ? c.score.toFixed(3) : "-",
      orDash(c.refusedBy),
      orDash(c.reason),
    ];
    if (wide) {
      row.splice(
        5,
        0,
        orDash(c.scores.map((s) => `${s.scorer}=${s.value.toFixed(2)}x${s.weight}`).join(",")),
      );
    }
    return row;
  });
  return renderTable(headers, rows);
}

export function placementView(
  res: Pick<ExplainPlacementResponse, "feasible" | "placement">,
  o: ViewOptions,
): string {
  const p = res.placement;
  const lines: string[] = [];
  if (res.feasible && p?.poolId) lines.push(`Chosen pool: ${chosenLine(p)}`);
  else lines.push("Chosen pool: none: no pool passed every filter (see REFUSED_BY and REASON below)");
  if (p?.summary) lines.push(`Summary:     ${p.summary}`);
  const refusals = Object.entries(p?.refusals ?? {}).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  if (refusals.length > 0)
    lines.push(
      `Refused:     ${refusals.map(([f, n]) => `${n} by ${f}`).join(", ")}${p?.poolsConsidered ? ` (of ${p.poolsConsidered} pools)` : ""}`,
    );
  let text = `${lines.join("\n")}\n`;
  if (p && p.candidates.length > 0) text += `\n${candidateTable(p, o)}`;
  else text += "\nNo candidate pools: are any hosts registered? see `stowctl pool list`\n";
  return text;
}

export { chosenLine as placementSummaryLine };
