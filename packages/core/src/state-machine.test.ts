import { describe, expect, it } from "vitest";
import { StowageError } from "./errors.js";
import { OPERATION_STATE_MACHINE } from "./operation-state.js";
import { SNAPSHOT_STATE_MACHINE } from "./snapshot-state.js";
import { VOLUME_STATE_MACHINE, VOLUME_STATES } from "./volume-state.js";

describe("volume state machine", () => {
  it("knows every state it names", () => {
    expect(VOLUME_STATE_MACHINE.states).toEqual([...VOLUME_STATES]);
  });
  it("reverts through its own state, back to available or to error", () => {
    expect(VOLUME_STATE_MACHINE.canTransition("available", "reverting")).toBe(true);
    expect(VOLUME_STATE_MACHINE.canTransition("reverting", "available")).toBe(true);
    expect(VOLUME_STATE_MACHINE.canTransition("reverting", "error")).toBe(true);
    expect(VOLUME_STATE_MACHINE.canTransition("reverting", "resizing")).toBe(false);
    expect(VOLUME_STATE_MACHINE.canTransition("reverting", "deleting")).toBe(false);
  });
  it("refuses an illegal transition with FAILED_PRECONDITION naming the volume and both states", () => {
    let err: unknown;
    try {
      VOLUME_STATE_MACHINE.assertTransition("resizing", "deleting", "volume vm1-disk0");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(StowageError);
    expect(err).toMatchObject({
      code: "failed_precondition",
      message: "volume vm1-disk0 is resizing and cannot become deleting",
      details: { from: "resizing", to: "deleting" },
    });
  });
  it("lets a state stay as it is, so redelivered results converge", () => {
    for (const s of VOLUME_STATES) expect(VOLUME_STATE_MACHINE.canTransition(s, s)).toBe(true);
  });
});

describe("snapshot state machine", () => {
  it("deletes a snapshot from any live state and never brings a deleted one back", () => {
    for (const s of ["creating", "available", "error"] as const)
      expect(SNAPSHOT_STATE_MACHINE.canTransition(s, "deleting")).toBe(true);
    expect(SNAPSHOT_STATE_MACHINE.canTransition("deleted", "available")).toBe(false);
    expect(SNAPSHOT_STATE_MACHINE.canTransition("available", "creating")).toBe(false);
  });
});

describe("operation state machine", () => {
  it("finishes an operation only from pending or sent, and only once", () => {
    expect(OPERATION_STATE_MACHINE.sourcesOf("succeeded")).toEqual(["pending", "sent"]);
    expect(OPERATION_STATE_MACHINE.sourcesOf("failed")).toEqual(["pending", "sent"]);
    expect(OPERATION_STATE_MACHINE.canTransition("succeeded", "succeeded")).toBe(false);
  });
  it("sends a pending operation, and a sent one again", () => {
    expect(OPERATION_STATE_MACHINE.sourcesOf("sent")).toEqual(["pending", "sent"]);
  });
});
