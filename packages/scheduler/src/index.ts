export * from "./scheduler.js";
export * from "./types.js";
