import { describe, expect, it } from "vitest";
import { countsByHost, upsertHost } from "./hosts.js";
import { applyPoolReports } from "./pools.js";
import { backends, migratedDatabase } from "./testing/backends.js";
import { GiB, hostRegistration, newVolume, poolReport, volumeInState } from "./testing/fixtures.js";

describe.each(backends)("host counts on %s", (_name, makeBackend) => {
  const db = migratedDatabase(makeBackend);

  it("counts present pools and live volumes of the hosts asked for, and only those", async () => {
    const { sql } = db();
    for (const id of ["hc-a", "hc-b", "hc-c"]) await upsertHost(sql, hostRegistration(id));
    await applyPoolReports(sql, "hc-a", [poolReport("p", 100n * GiB), poolReport("q", 100n * GiB)]);
    await applyPoolReports(sql, "hc-b", [poolReport("p", 100n * GiB)]);
    await volumeInState(sql, newVolume("vol-hc1", "hc-a/p", GiB), "available");
    await volumeInState(sql, newVolume("vol-hc2", "hc-a/q", GiB), "creating");
    await volumeInState(sql, newVolume("vol-hc3", "hc-a/q", GiB), "deleted");
    await volumeInState(sql, newVolume("vol-hc4", "hc-b/p", GiB), "available");

    const counts = await countsByHost(sql, ["hc-a", "hc-c", "hc-a"]);
    expect([...counts.keys()].sort()).toEqual(["hc-a", "hc-c"]);
    expect(counts.get("hc-a")).toEqual({ pools: 2, volumes: 2 });
    expect(counts.get("hc-c")).toEqual({ pools: 0, volumes: 0 });
    expect((await countsByHost(sql, [])).size).toBe(0);
  });
});
