import { readdirSync } from "node:fs";
import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

// Tests import workspace packages from their sources, so no build is needed for unit tests. Subpath entry
// points come first: an alias also matches every path below it.
const alias = {
  "@stowage/drivers/testing": resolve(import.meta.dirname, "packages/drivers/src/testing.ts"),
  "@stowage/store/testing": resolve(import.meta.dirname, "packages/store/src/testing/fixtures.ts"),
  ...Object.fromEntries(
    readdirSync(resolve(import.meta.dirname, "packages")).map((p) => [
      `@stowage/${p}`,
      resolve(import.meta.dirname, "packages", p, "src/index.ts"),
    ]),
  ),
};

export default defineConfig({
  resolve: { alias },
  test: {
    include: ["packages/*/src/**/*.test.ts", "apps/*/src/**/*.test.ts", "test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: "forks",
  },
});
