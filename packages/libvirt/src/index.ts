export * from "./disk.js";
export * from "./domain.js";
export * from "./validate.js";
