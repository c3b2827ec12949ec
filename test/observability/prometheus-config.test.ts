import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { execa } from "execa";
import { describe, expect, it } from "vitest";
import { configuredJobs, PROMETHEUS_DIR } from "./dashboards.js";

const promtool = (() => {
  try {
    execFileSync("which", ["promtool"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

async function run(...args: string[]) {
  const r = await execa("promtool", args, { cwd: PROMETHEUS_DIR, reject: false });
  return { exitCode: r.exitCode, output: `${r.stdout}\n${r.stderr}` };
}

describe.skipIf(!promtool)("deploy/prometheus", () => {
  it("passes promtool check rules", async () => {
    const r = await run("check", "rules", "alerts.yml");
    expect(r.exitCode, r.output).toBe(0);
    expect(r.output).toMatch(/SUCCESS: 15 rules found/);
  });

  it("passes promtool check config, its rule file included", async () => {
    const r = await run("check", "config", "prometheus.yml");
    expect(r.exitCode, r.output).toBe(0);
    expect(r.output).toMatch(/SUCCESS: 1 rule files found/);
  });

  it("passes the alert rules' unit tests (promtool test rules)", async () => {
    const r = await run("test", "rules", "alerts.test.yml");
    expect(r.exitCode, r.output).toBe(0);
  });

  it("scrapes the local cluster's controller and agents", () => {
    const text = readFileSync(join(PROMETHEUS_DIR, "prometheus.yml"), "utf8");
    expect(configuredJobs()).toEqual(["stowage-controller", "stowage-agent"]);
    expect(text).toContain('targets: ["127.0.0.1:7481"]');
    expect(text).toContain('targets: ["127.0.0.1:7482", "127.0.0.1:7483", "127.0.0.1:7484"]');
  });

  it("gives every alert a for duration, a severity, a summary and a description", () => {
    const text = readFileSync(join(PROMETHEUS_DIR, "alerts.yml"), "utf8");
    const rules = text.split(/^\s*- alert: /m).slice(1);
    expect(rules.length).toBe(15);
    for (const r of rules) {
      const name = r.split("\n")[0];
      expect(r, name).toMatch(/^\s+for: \d+[smh]$/m);
      expect(r, name).toMatch(/^\s+severity: (critical|warning|info)$/m);
      expect(r, name).toMatch(/^\s+summary: \S/m);
      expect(r, name).toMatch(/^\s+description: \S/m);
    }
  });
});
