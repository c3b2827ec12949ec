import { describe, expect, it } from "vitest";
import { formatCpuList, parseCpuList } from "./cpulist.js";
import { StowageError } from "./errors.js";
import { isId, newId } from "./ids.js";
import { isValidName, validateName } from "./names.js";
import { assertTransition, canTransition } from "./volume-state.js";

describe("names", () => {
  it.each(["a", "vm1-disk0", "db.data_01", "0abc"])("accepts %s", (n) => expect(isValidName(n)).toBe(true));
  it.each(["", "../x", "x/y", "A", "-x", ".x", "a..b", "x y", "a;rm", "a".repeat(64), "$(id)"])(
    "refuses %j",
    (n) => expect(isValidName(n)).toBe(false),
  );
  it("throws invalid_argument naming the field", () => {
    try {
      validateName("volume name", "../x");
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(StowageError);
      expect((e as StowageError).code).toBe("invalid_argument");
      expect((e as StowageError).message).toMatch(/volume name "..\/x" is not valid/);
    }
  });
});

describe("ids", () => {
  it("are prefixed, hex and time-ordered", () => {
    const a = newId("vol", 1_000);
    const b = newId("vol", 2_000);
    expect(isId(a, "vol")).toBe(true);
    expect(isId(a, "op")).toBe(false);
    expect(a < b).toBe(true);
  });
});

describe("cpu lists", () => {
  it("round-trips kernel notation", () => {
    expect(parseCpuList("0-3,8,10-11")).toEqual([0, 1, 2, 3, 8, 10, 11]);
    expect(formatCpuList([11, 10, 8, 3, 2, 1, 0])).toBe("0-3,8,10-11");
    expect(parseCpuList("")).toEqual([]);
    expect(() => parseCpuList("a-b")).toThrow(/not valid/);
  });
});

describe("volume state machine", () => {
  it("allows the lifecycle and refuses shortcuts", () => {
    expect(canTransition("creating", "available")).toBe(true);
    expect(canTransition("available", "available")).toBe(true);
    expect(canTransition("deleted", "available")).toBe(false);
    expect(() => assertTransition("creating", "resizing", "vol-1")).toThrow(
      /vol-1 is creating and cannot become resizing/,
    );
  });
});
