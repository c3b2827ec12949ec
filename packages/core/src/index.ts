export * from "./capabilities.js";
export * from "./cpulist.js";
export * from "./domain.js";
export * from "./errors.js";
export * from "./ids.js";
export * from "./names.js";
export * from "./sizes.js";
export * from "./volume-state.js";
