import { createAgentMetrics } from "../../apps/agent/src/metrics.js";
import { createControllerMetrics } from "../../apps/controller/src/metrics.js";

/**
 * Every metric name the controller and the agent export, read from their registries (built the way the apps build
 * them, with every optional metric on), with the series names of histograms and summaries.
 */
export function exportedMetricNames(): Set<string> {
  const controller = createControllerMetrics(() => undefined, { pendingCommands: async () => 0 });
  const agent = createAgentMetrics("any", () => []);
  const names = new Set<string>();
  for (const registry of [controller.registry, agent.registry]) {
    for (const metric of registry.getMetricsAsArray()) {
      const { name, type } = metric as unknown as { name: string; type: string };
      names.add(name);
      if (type === "histogram") for (const s of ["_bucket", "_sum", "_count"]) names.add(name + s);
      if (type === "summary") for (const s of ["_sum", "_count"]) names.add(name + s);
    }
  }
  return names;
}

/** Metric names in a text exposition (`# TYPE` lines, and the names of the samples). */
export function namesInExposition(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line.trim()) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line);
    if (m) names.add(m[1]!);
  }
  return names;
}
