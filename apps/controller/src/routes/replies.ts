import type { OperationRow } from "@stowage/store";
import { operationToWire } from "../convert.js";

/** The operation a mutating call started (or found in flight), if any. */
export const operationReply = (o: OperationRow | undefined) => (o ? operationToWire(o) : undefined);
