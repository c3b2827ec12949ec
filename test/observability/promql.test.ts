import { describe, expect, it } from "vitest";
import { metricNames, parsePromQL, withoutThresholds } from "./promql.js";

describe("metricNames", () => {
  it("finds every selected metric, inside functions, aggregations and binary operations", () => {
    expect(
      metricNames(
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x=~"y"}[5m]))) / on (pool) group_left b > 0 and {__name__="c"}',
      ),
    ).toEqual(["a_bucket", "b", "c"]);
  });

  it("does not take label names, function names or strings for metrics", () => {
    expect(metricNames('label_replace(up, "dst", "$1", "src", "(.*)")')).toEqual(["up"]);
    expect(metricNames("sum by (rate) (rate(x[1m]))")).toEqual(["x"]);
  });

  it("rejects invalid PromQL", () => {
    expect(() => parsePromQL("sum(rate(x[5m])")).toThrow(/syntax error/);
    expect(() => parsePromQL("rate(x[$__rate_interval])")).toThrow(/syntax error/);
  });
});

describe("withoutThresholds", () => {
  it("drops a comparison against a constant, on either side", () => {
    expect(withoutThresholds("max by (host) (up) == 0")).toBe("max by (host) (up)");
    expect(withoutThresholds("0.9 < a / b")).toBe("a / b");
    expect(withoutThresholds("x < 4 * 3600")).toBe("x");
  });

  it("drops guards inside the expression too, and keeps both sides of a set operator", () => {
    expect(withoutThresholds("a / (b > 0) > 0.85")).toBe("a / (b)");
    expect(
      withoutThresholds("sum(rate(f[15m])) / sum(rate(t[15m])) > 0.2\n  and sum(increase(f[15m])) >= 3"),
    ).toBe("sum(rate(f[15m])) / sum(rate(t[15m]))\n  and sum(increase(f[15m]))");
  });

  it("keeps comparisons between two vectors and arithmetic with constants", () => {
    expect(withoutThresholds("a > b")).toBe("a > b");
    expect(withoutThresholds("a * 100 - 5")).toBe("a * 100 - 5");
  });
});
