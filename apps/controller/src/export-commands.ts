import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { AgentCommandSchema } from "@stowage/proto";
import { exportSecrets, type OperationRow } from "@stowage/store";
import type { ControllerContext } from "./context.js";
import { secretBox } from "./secret-box.js";

/**
 * The command bytes to publish for an operation: as the outbox keeps them, except a create_export, whose secrets
 * (CHAP, cephx keys) the outbox never holds: they are opened from the export's sealed values at send time.
 */
export async function publishableCommand(
  ctx: ControllerContext,
  op: Pick<OperationRow, "kind" | "exportId" | "command">,
): Promise<Uint8Array> {
  if (op.kind !== "create_export" || !op.exportId) return op.command;
  const cmd = fromBinary(AgentCommandSchema, op.command);
  if (cmd.payload.case !== "createExport") return op.command;
  const secrets = await exportSecrets(ctx.sql, op.exportId);
  if (!secrets) return op.command;
  const b = await secretBox(ctx.config);
  const e = cmd.payload.value;
  if (secrets.chapSecret) e.chapSecret = b.open(secrets.chapSecret, op.exportId);
  for (const c of e.allowed) {
    const k = secrets.cephxKeys.get(c.hostId);
    if (k) c.cephxKey = b.open(k, op.exportId);
  }
  return toBinary(AgentCommandSchema, cmd);
}
