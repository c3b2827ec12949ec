import { describe, expect, it } from "vitest";
import { counter, createRegistry, withOutcomes } from "./metrics.js";

describe("withOutcomes", () => {
  it("exports the other outcomes at 0 when a label set is first counted, once", async () => {
    const registry = createRegistry({ defaults: false });
    const c = withOutcomes(counter(registry, "x_total", "x", ["tool", "result"]), "result", ["ok", "failed"]);
    c.inc({ tool: "rbd", result: "failed" }, 2);
    c.inc({ tool: "rbd", result: "failed" });
    c.inc({ result: "ok", tool: "rbd" });
    const values = (await c.get()).values.map((v) => [v.labels.tool, v.labels.result, v.value]);
    expect(values.sort()).toEqual([
      ["rbd", "failed", 3],
      ["rbd", "ok", 1],
    ]);
  });

  it("counts unlabelled increments as before", async () => {
    const registry = createRegistry({ defaults: false });
    const c = withOutcomes(counter(registry, "y_total", "y", ["result"]), "result", ["ok"]);
    c.inc();
    c.inc(2);
    expect((await c.get()).values.find((v) => Object.keys(v.labels).length === 0)?.value).toBe(3);
  });
});

describe("createRegistry", () => {
  it("leaves out the default gauges that promtool rejects for their _total suffix", async () => {
    const text = await createRegistry().metrics();
    expect(text).toContain("process_cpu_user_seconds_total");
    expect(text).toContain("nodejs_active_handles ");
    expect(text).not.toContain("nodejs_active_handles_total");
  });
});
