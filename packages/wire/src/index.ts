import { checkWireEnums } from "./enums.js";

export * from "./artifacts.js";
export * from "./commands.js";
export * from "./enums.js";
export * from "./errors.js";
export * from "./grpc-status.js";
export * from "./qcow2.js";

// Every process that speaks the wire imports this package: a proto enum out of step with core stops it here.
checkWireEnums();
