import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { createAgentMetrics, type PoolSample } from "./metrics.js";

const GiB = 2n ** 30n;
const pool: PoolSample = {
  pool: "thin",
  kind: "lvmthin",
  totalBytes: 100n * GiB,
  usedBytes: 40n * GiB,
  freeBytes: 60n * GiB,
  provisionedBytes: 300n * GiB,
  dataPercent: 40,
  metadataPercent: 12.5,
  healthy: true,
  volumes: 7,
};

async function value(m: ReturnType<typeof createAgentMetrics>, name: string, labels: Record<string, string>) {
  const metric = (await m.registry.getMetricsAsJSON()).find((x) => x.name === name);
  return metric?.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value;
}

describe("agent metrics", () => {
  it("exports the last inventory's pools, labelled with the host", async () => {
    const m = createAgentMetrics("node1", () => [pool]);
    const labels = { host: "node1", pool: "thin", kind: "lvmthin" };
    expect(await value(m, "stowage_agent_pool_capacity_bytes", labels)).toBe(100 * 2 ** 30);
    expect(await value(m, "stowage_agent_pool_used_bytes", labels)).toBe(40 * 2 ** 30);
    expect(await value(m, "stowage_agent_pool_data_percent", labels)).toBe(40);
    expect(await value(m, "stowage_agent_pool_metadata_percent", labels)).toBe(12.5);
    expect(await value(m, "stowage_agent_pool_healthy", labels)).toBe(1);
  });

  it("exports every operation kind on each backend it has at 0, successes and failures", async () => {
    const m = createAgentMetrics("node1", () => [pool]);
    const failed = { kind: "create_volume", backend: "lvmthin", result: "failed" };
    expect(await value(m, "stowage_agent_operations_total", failed)).toBe(0);
    expect(await value(m, "stowage_agent_operations_total", { ...failed, kind: "copy_volume" })).toBe(0);
    m.operations.inc({ kind: "create_volume", backend: "lvmthin", result: "succeeded" });
    expect(await value(m, "stowage_agent_operations_total", { ...failed, result: "succeeded" })).toBe(1);
    expect(await value(m, "stowage_agent_operations_total", { ...failed, backend: "dir" })).toBeUndefined();
    const scrape = await m.registry.metrics();
    expect(scrape).toContain(
      'stowage_agent_operation_duration_seconds_count{host="node1",kind="copy_volume",backend="lvmthin"} 0',
    );
  });

  it("exports a tool's failures and timeouts at 0 from its first invocation", async () => {
    const m = createAgentMetrics("node1", () => []);
    expect(await value(m, "stowage_tool_invocations_total", { tool: "qemu-img" })).toBeUndefined();
    m.toolInvocations.inc({ tool: "qemu-img", result: "ok" });
    m.toolInvocations.inc({ tool: "qemu-img", result: "ok" });
    expect(await value(m, "stowage_tool_invocations_total", { tool: "qemu-img", result: "ok" })).toBe(2);
    expect(await value(m, "stowage_tool_invocations_total", { tool: "qemu-img", result: "failed" })).toBe(0);
    expect(await value(m, "stowage_tool_invocations_total", { tool: "qemu-img", result: "timeout" })).toBe(0);
  });

  it("passes promtool check metrics", async () => {
    const m = createAgentMetrics("node1", () => [pool]);
    m.toolInvocations.inc({ tool: "lvcreate", result: "failed" });
    m.toolDuration.observe({ tool: "lvcreate" }, 0.2);
    m.redeliveries.inc();
    const r = await execa("promtool", ["check", "metrics"], {
      input: await m.registry.metrics(),
      reject: false,
    });
    expect(`${r.stdout}${r.stderr}`).toBe("");
    expect(r.exitCode).toBe(0);
  });
});
