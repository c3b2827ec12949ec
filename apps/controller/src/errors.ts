import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { type ErrorCode, StowageError } from "@stowage/core";

const CODES: Record<ErrorCode, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  resource_exhausted: Code.ResourceExhausted,
  failed_precondition: Code.FailedPrecondition,
  aborted: Code.Aborted,
  unavailable: Code.Unavailable,
  deadline_exceeded: Code.DeadlineExceeded,
  unimplemented: Code.Unimplemented,
  permission_denied: Code.PermissionDenied,
  unauthenticated: Code.Unauthenticated,
  internal: Code.Internal,
};

/** Domain errors become gRPC statuses here and nowhere else. */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const e = StowageError.from(err);
  return new ConnectError(e.message, CODES[e.code], undefined, undefined, e);
}

export const errorInterceptor: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (err) {
    throw toConnectError(err);
  }
};
