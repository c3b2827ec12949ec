import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type AuditEvent, AuditEventSchema, type ListAuditEventsRequest } from "@stowage/proto";
import { afterEach, describe, expect, it } from "vitest";
import { parseWhen } from "./commands/audit.js";
import {
  type FakeController,
  type FakeOverrides,
  NOW,
  startFakeController,
} from "./testing/fake-controller.js";
import { runStowctl } from "./testing/run.js";

let fake: FakeController | undefined;
afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

async function stowctl(args: string[]) {
  return runStowctl(args, { STOWAGE_SERVER: fake?.url, STOWAGE_TOKEN: "adm" });
}

/** 250 events, ids 250 down to 1, one a minute back from NOW. */
const EVENTS: AuditEvent[] = Array.from({ length: 250 }, (_, i) =>
  create(AuditEventSchema, {
    id: BigInt(250 - i),
    at: timestampFromDate(new Date(NOW.getTime() - (i + 1) * 60_000)),
    actor: i % 2 ? "vera" : "ci",
    role: i % 2 ? "viewer" : "operator",
    source: "10.0.0.7:51234",
    action: "CreateVolume",
    target: `vm${i}-disk0`,
    requestJson: JSON.stringify({ name: `vm${i}-disk0`, joinToken: "[redacted]" }),
    outcome: i % 2 ? "denied" : "ok",
    error:
      i % 2
        ? `permission_denied: vera (viewer) may not call CreateVolume: it needs the operator role ${"x".repeat(80)}`
        : "",
  }),
);

/** Pages by id like the controller: page_token is the last id answered. */
const audit: FakeOverrides["audit"] = {
  listAuditEvents: async (req) => {
    const before = req.pageToken ? BigInt(req.pageToken) : undefined;
    const size = req.pageSize || 100;
    const match = EVENTS.filter(
      (e) =>
        (!req.actor || e.actor === req.actor) &&
        (!req.outcome || e.outcome === req.outcome) &&
        (before === undefined || e.id < before),
    );
    const page = match.slice(0, size);
    return { events: page, nextPageToken: match.length > size ? page[page.length - 1]!.id.toString() : "" };
  },
};

describe("audit list", () => {
  it("prints a table of who did what from where, newest first, without secrets", async () => {
    fake = await startFakeController({ audit });
    const r = await stowctl(["audit", "list", "--limit", "3"]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^AT\s+ACTOR\s+ROLE\s+SOURCE\s+ACTION\s+TARGET\s+OUTCOME\s+ERROR$/);
    expect(lines).toHaveLength(4);
    expect(lines[1]).toMatch(
      /^60s ago\s+ci\s+operator\s+10\.0\.0\.7:51234\s+CreateVolume\s+vm0-disk0\s+ok\s+-$/,
    );
    expect(lines[2]).toMatch(
      /^2m ago\s+vera\s+viewer\s+10\.0\.0\.7:51234\s+CreateVolume\s+vm1-disk0\s+denied\s+permission_denied: vera/,
    );
    expect(lines[2]!.endsWith("…")).toBe(true);
    expect(r.stderr).toContain("Showing the newest 3");
    expect(fake.requests<ListAuditEventsRequest>("listAuditEvents")).toEqual([
      expect.objectContaining({ pageSize: 3, pageToken: "" }),
    ]);
    expect(fake.calls[0]!.authorization).toBe("Bearer adm");

    const wide = await stowctl(["audit", "list", "--limit", "1", "-o", "wide"]);
    expect(wide.stdout).toMatch(/^ID\s+AT\s+ACTOR.*REQUEST\n250\s+2025-01-01T11:59:00.000Z\s+ci\s/);
    expect(wide.stdout).toContain('{"name":"vm0-disk0","joinToken":"[redacted]"}');
  });

  it("prints JSON, sends the filters and the time window, and pages through next_page_token up to --limit", async () => {
    fake = await startFakeController({ audit });
    const r = await stowctl([
      "audit",
      "list",
      "--actor",
      "vera",
      "--outcome",
      "denied",
      "--since",
      "1d",
      "--until",
      "2025-01-01T06:00:00Z",
      "--action",
      "CreateVolume",
      "--target",
      "vm1-disk0",
      "-o",
      "json",
    ]);
    expect(r.code).toBe(0);
    const [req] = fake.requests<ListAuditEventsRequest>("listAuditEvents");
    expect(req).toMatchObject({
      actor: "vera",
      outcome: "denied",
      action: "CreateVolume",
      target: "vm1-disk0",
    });
    expect(timestampDate(req!.since!).toISOString()).toBe("2024-12-31T12:00:00.000Z");
    expect(timestampDate(req!.until!).toISOString()).toBe("2025-01-01T06:00:00.000Z");

    fake.calls.length = 0;
    const all = await stowctl(["audit", "list", "--limit", "1200", "-o", "json"]);
    const events = JSON.parse(all.stdout);
    expect(events).toHaveLength(250);
    expect(events[0]).toMatchObject({
      id: "250",
      actor: "ci",
      role: "operator",
      source: "10.0.0.7:51234",
      outcome: "ok",
    });
    expect(events[249]).toMatchObject({ id: "1" });
    expect(fake.requests<ListAuditEventsRequest>("listAuditEvents").map((q) => q.pageSize)).toEqual([1000]);

    fake.calls.length = 0;
    const some = JSON.parse((await stowctl(["audit", "list", "--actor", "vera", "-o", "json"])).stdout);
    expect(some).toHaveLength(100);
    expect(some.every((e: { actor: string }) => e.actor === "vera")).toBe(true);

    fake.calls.length = 0;
    const paged = JSON.parse(
      (await stowctl(["audit", "list", "--limit", "1500", "--actor", "ci", "-o", "json"])).stdout,
    );
    expect(paged).toHaveLength(125);
  });

  it("follows pages when the controller answers less than asked", async () => {
    const small: FakeOverrides["audit"] = {
      listAuditEvents: async (req) => audit.listAuditEvents!({ ...req, pageSize: 40 }, undefined as never),
    };
    fake = await startFakeController({ audit: small });
    const r = await stowctl(["audit", "list", "--limit", "100", "-o", "json"]);
    expect(JSON.parse(r.stdout)).toHaveLength(100);
    const reqs = fake.requests<ListAuditEventsRequest>("listAuditEvents");
    expect(reqs.map((q) => [q.pageSize, q.pageToken])).toEqual([
      [100, ""],
      [60, "211"],
      [20, "171"],
    ]);
  });

  it("says so when nothing matches", async () => {
    fake = await startFakeController({ audit });
    const r = await stowctl(["audit", "list", "--actor", "nobody"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("No audit events match");
    expect(JSON.parse((await stowctl(["audit", "list", "--actor", "nobody", "-o", "json"])).stdout)).toEqual(
      [],
    );
  });

  it("refuses bad flags before calling the controller", async () => {
    fake = await startFakeController({ audit });
    for (const args of [
      ["--outcome", "maybe"],
      ["--since", "yesterday"],
      ["--since", "2025-13-45"],
      ["--until", "-5m"],
      ["--limit", "0"],
      ["--limit", "many"],
      ["--since", "1h", "--until", "2h"],
    ])
      expect((await stowctl(["audit", "list", ...args])).code, args.join(" ")).toBe(2);
    expect(fake.calls).toEqual([]);
  });

  it("has help with examples", async () => {
    const r = await stowctl(["audit", "list", "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("stowctl audit list --since 1h");
    expect(r.stdout).toContain("--outcome <outcome>");
  });

  it("reads --since as a duration ago or an ISO time", () => {
    expect(parseWhen("90m", "--since", NOW).toISOString()).toBe("2025-01-01T10:30:00.000Z");
    expect(parseWhen("2d", "--since", NOW).toISOString()).toBe("2024-12-30T12:00:00.000Z");
    expect(parseWhen("1d12h", "--since", NOW).toISOString()).toBe("2024-12-31T00:00:00.000Z");
    expect(parseWhen("2024-06-01", "--since", NOW).toISOString()).toBe("2024-06-01T00:00:00.000Z");
    expect(parseWhen("2024-06-01T10:00:00+02:00", "--since", NOW).toISOString()).toBe(
      "2024-06-01T08:00:00.000Z",
    );
  });
});
