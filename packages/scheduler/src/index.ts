export * from "./capacity.js";
export * from "./filters.js";
export * from "./place.js";
export * from "./scorers.js";
export * from "./types.js";
