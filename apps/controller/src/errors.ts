import { type Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { StowageError } from "@stowage/core";
import { grpcStatusOf } from "@stowage/wire";

/** Domain errors become gRPC statuses here and nowhere else (the code table is the wire's). */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  const e = StowageError.from(err);
  return new ConnectError(e.message, grpcStatusOf(e.code) as Code, undefined, undefined, e);
}

export const errorInterceptor: Interceptor = (next) => async (req) => {
  try {
    return await next(req);
  } catch (err) {
    throw toConnectError(err);
  }
};
