/**
 * @stowage/testkit: real backends and helpers for tests. Every test file starts its own backends on its own
 * ports and directories, so files run in parallel; whatever is started is stopped when the test process exits,
 * even if a test forgot to (and a watchdog cleans up after a SIGKILLed worker).
 *
 * Environment:
 * - STOWAGE_TEST_PG_URL: a running PostgreSQL (superuser URL, database `postgres`). When set, suites create
 *   their databases in it (`testPostgres()`, `createTestDatabase()`) instead of starting servers.
 *   scripts/test.sh starts one server per run and sets it.
 * - STOWAGE_TEST_NATS_AUTOSTART=1: NATS suites must run (a missing nats-server is a failure, not a skip).
 * - STOWAGE_NATS_SERVER, STOWAGE_PG_BIN: where nats-server / initdb+pg_ctl are, when not in the usual places.
 * - STOWAGE_TEST_KEEP_TMP=1: keep temp directories for inspection.
 * - STOWAGE_TESTKIT_NO_REAPER=1: no watchdog process (exit handlers still clean up).
 */
export * from "./ceph.js";
export * from "./cleanup.js";
export * from "./fake-sysfs.js";
export * from "./ganesha.js";
export * from "./kernel-vm.js";
export * from "./lvm.js";
export * from "./nats.js";
export * from "./netns.js";
export * from "./ports.js";
export * from "./postgres.js";
export * from "./process.js";
export * from "./qsd.js";
export * from "./temp.js";
export * from "./tgt.js";
