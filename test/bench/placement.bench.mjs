// npm run bench:placement: the controller's placement decision through its live view (apps/controller/src/
// live-view.ts) at 10,000 hosts with 4 pools each (BENCH_HOSTS to change it), on embedded PGlite (or on
// PostgreSQL with BENCH_PG_URL). It fills the database, loads the view, then times the controller's `decide`
// (the view's readiness, the request's anti-affinity group when it has one, the select, the hold, as
// CreateVolume runs it) and what keeping the view costs: re-reading one pool after another writer changed it
// (the change feed's work) and moving one pool's columns in place. Ends with one JSON line. It builds the
// controller and what it depends on first (turbo's cache makes that instant when nothing changed).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../..", import.meta.url));
const build = spawnSync(
  "node_modules/.bin/turbo",
  ["run", "build", "--filter=@stowage/controller...", "--output-logs=errors-only"],
  { cwd: root, encoding: "utf8" },
);
if (build.status !== 0) {
  process.stderr.write(`building the controller failed:\n${build.stdout ?? ""}${build.stderr ?? ""}\n`);
  process.exit(1);
}
const { openDatabase, migrate } = await import("../../packages/store/dist/index.js");
const { decide } = await import("../../apps/controller/dist/scheduling.js");
const { LiveView } = await import("../../apps/controller/dist/live-view.js");
const { createControllerMetrics } = await import("../../apps/controller/dist/metrics.js");

const HOSTS = Number(process.env.BENCH_HOSTS ?? 10_000);
const DECISIONS = Number(process.env.BENCH_DECISIONS ?? 3_000);
const GiB = 1024n ** 3n;

const dir = mkdtempSync(join(tmpdir(), "stowage-bench-placement-"));
const db = await openDatabase(
  process.env.BENCH_PG_URL ? { url: process.env.BENCH_PG_URL } : { dataDir: dir },
);
try {
  await migrate(db.sql);
  const sql = db.sql;
  let t = performance.now();
  await sql`insert into hosts (id, zone, numa_nodes)
    select 'host' || lpad(h::text, 5, '0'), 'zone' || (h % 3),
      '[{"id":0,"cpuList":"0-15"},{"id":1,"cpuList":"16-31"}]'::jsonb
    from generate_series(0, ${HOSTS - 1}) h on conflict do nothing`;
  await sql`insert into pools (id, host_id, name, kind, numa_node, total_bytes, free_bytes, used_bytes,
      overcommit_ratio, formats, labels, allocated_bytes, volume_count)
    select 'host' || lpad(h::text, 5, '0') || '/pool' || p, 'host' || lpad(h::text, 5, '0'), 'pool' || p,
      (array['dir','lvm','lvmthin','rbd'])[p + 1], case when p = 3 then null else p % 2 end,
      ${4096n * GiB}, ${4096n * GiB} - (h % 97) * ${GiB}, 0, case when p >= 2 then 20 else 1 end,
      case when p = 0 then '["qcow2","raw"]'::jsonb else '["raw"]'::jsonb end,
      jsonb_build_object('tier', case when p < 2 then 'ssd' else 'hdd' end), (h % 97) * ${GiB}, h % 50
    from generate_series(0, ${HOSTS - 1}) h, generate_series(0, 3) p on conflict do nothing`;
  const fillMs = performance.now() - t;

  const ctx = {
    db,
    sql,
    config: { schedulerWeights: {} },
    log: { warn() {}, info() {}, error() {}, debug() {} },
    metrics: createControllerMetrics(() => sql),
  };
  ctx.placement = new LiveView(db, { log: ctx.log });
  t = performance.now();
  await ctx.placement.start();
  const loadMs = performance.now() - t;

  const requests = [
    { name: "v", sizeBytes: 10n * GiB, format: "raw", constraints: {} },
    { name: "v", sizeBytes: 10n * GiB, format: "qcow2", constraints: { strategy: "binpack" } },
    { name: "v", sizeBytes: 10n * GiB, format: "raw", constraints: { poolKinds: ["lvmthin"] } },
    {
      name: "v",
      sizeBytes: 10n * GiB,
      format: "raw",
      constraints: { numa: { hostId: "host00042", node: 1 } },
    },
    { name: "v", sizeBytes: 10n * GiB, format: "raw", constraints: { poolLabels: { tier: "ssd" } } },
  ];
  const times = [];
  for (let k = 0; k < DECISIONS; k++) {
    const t0 = performance.now();
    const { decision, hold } = await decide(ctx, requests[k % requests.length], { hold: true });
    times.push(performance.now() - t0);
    if (!decision.feasible) throw new Error(`not placed: ${decision.summary}`);
    // As a failed transaction would: the next decision sees the cluster as it was.
    ctx.placement.release(hold);
    if (k % 100 === 99) await ctx.placement.sync();
  }
  times.sort((a, b) => a - b);
  // The decision's own work, synchronous (what the awaits above add is other work on the event loop).
  const sync = [];
  const noGroups = new Map();
  for (let k = 0; k < DECISIONS; k++) {
    const t0 = performance.now();
    const { hold } = ctx.placement.place(requests[k % requests.length], noGroups, { hold: true });
    sync.push(performance.now() - t0);
    ctx.placement.release(hold);
  }
  await ctx.placement.sync();
  sync.sort((a, b) => a - b);
  const pct = (a, q) => a[Math.min(a.length - 1, Math.floor(a.length * q))];

  // Another writer changes one pool; the view re-reads it (what the feed does for each change).
  const rereads = [];
  for (let k = 0; k < 200; k++) {
    const id = `host${String((k * 37) % HOSTS).padStart(5, "0")}/pool${k % 4}`;
    await sql`update pools set used_bytes = used_bytes + 1 where id = ${id}`;
    const t0 = performance.now();
    await ctx.placement.reread([id]);
    rereads.push(performance.now() - t0);
  }
  rereads.sort((a, b) => a - b);
  // Holding and releasing: two in-place column updates of one pool each, in memory.
  const updates = 20_000;
  t = performance.now();
  for (let k = 0; k < updates; k++) {
    const h = ctx.placement.hold(`host${String(k % HOSTS).padStart(5, "0")}/pool0`, GiB);
    ctx.placement.release(h);
  }
  const updateUs = ((performance.now() - t) * 1000) / (updates * 2);
  await ctx.placement.sync();
  await ctx.placement.stop();

  const out = {
    bench: "placement",
    database: db.kind,
    hosts: HOSTS,
    pools: ctx.placement.size,
    fill_ms: Math.round(fillMs),
    load_ms: Math.round(loadMs),
    decisions: DECISIONS,
    decide_p50_ms: +pct(times, 0.5).toFixed(3),
    decide_p99_ms: +pct(times, 0.99).toFixed(3),
    decide_max_ms: +times[times.length - 1].toFixed(3),
    place_sync_p50_ms: +pct(sync, 0.5).toFixed(3),
    place_sync_p99_ms: +pct(sync, 0.99).toFixed(3),
    reread_one_pool_p50_ms: +pct(rereads, 0.5).toFixed(3),
    reread_one_pool_p99_ms: +pct(rereads, 0.99).toFixed(3),
    update_in_place_us: +updateUs.toFixed(2),
    target_p99_ms: 2,
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
} finally {
  await db.close();
  rmSync(dir, { recursive: true, force: true });
}
