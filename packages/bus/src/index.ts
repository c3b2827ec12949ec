export * from "./batch.js";
export * from "./connection.js";
export * from "./consume.js";
export * from "./poison.js";
export * from "./pull.js";
export * from "./subjects.js";
