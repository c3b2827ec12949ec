/**
 * Subject and stream names. Host ids may contain '.', the NATS token separator, so they are encoded in subjects
 * and consumer names with '~' (which names never contain).
 */
export const COMMAND_STREAM = "STOWAGE_COMMANDS";
export const RESULT_STREAM = "STOWAGE_RESULTS";
export const RESULT_CONSUMER = "controller-results";

export const hostToken = (hostId: string) => hostId.replaceAll(".", "~");
export const tokenToHost = (token: string) => token.replaceAll("~", ".");

export const commandSubject = (hostId: string) => `stowage.cmd.${hostToken(hostId)}`;
export const resultSubject = (hostId: string) => `stowage.result.${hostToken(hostId)}`;
export const heartbeatSubject = (hostId: string) => `stowage.heartbeat.${hostToken(hostId)}`;
export const inventorySubject = (hostId: string) => `stowage.inventory.${hostToken(hostId)}`;
/**
 * Core-NATS request subject on which a host's agent publishes a full inventory when asked (a controller that saw
 * a gap in the host's sequence, or the host coming back). One token more than `inventorySubject`, so
 * `ALL_INVENTORIES` never matches it.
 */
export const inventoryRequestSubject = (hostId: string) => `stowage.inventory.request.${hostToken(hostId)}`;
/** The reply-subject prefix of a host's agent connection: its NATS credentials allow no other inbox. */
export const agentInboxPrefix = (hostId: string) => `_INBOX_${hostToken(hostId)}`;
export const agentConsumerName = (hostId: string) => `agent-${hostToken(hostId)}`;

/** Where a host's agent reads its commands and publishes the rest: the subjects of a RegisterAgent answer. */
export function agentSubjects(hostId: string) {
  return {
    commandSubject: commandSubject(hostId),
    commandStream: COMMAND_STREAM,
    resultSubject: resultSubject(hostId),
    inventorySubject: inventorySubject(hostId),
    heartbeatSubject: heartbeatSubject(hostId),
  };
}

export const ALL_RESULTS = "stowage.result.>";
export const ALL_HEARTBEATS = "stowage.heartbeat.*";
export const ALL_INVENTORIES = "stowage.inventory.*";
/** Core-NATS queue group shared by controller replicas, so each heartbeat is handled once. */
export const CONTROLLER_QUEUE = "stowage-controllers";
