export {
  type ClientFactory,
  type ClientOptions,
  type Clients,
  createClients,
  normalizeServerUrl,
} from "./client.js";
export { EXIT_CODE_HELP, ExitCode, exitCodeFor } from "./errors.js";
export { createProgram, type ProgramDeps, type StowctlProgram, type Writer } from "./program.js";
