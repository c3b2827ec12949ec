export * from "./fault.js";
export * from "./forecast.js";
export * from "./http.js";
export * from "./logger.js";
export * from "./metrics.js";
