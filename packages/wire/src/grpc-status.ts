import type { ErrorCode } from "@stowage/core";

/**
 * Domain error codes as gRPC status codes, the one table. The numbers are gRPC's own (its status-code spec),
 * which Connect's `Code` enum uses too, so callers cast them to `Code`; wire stays free of any RPC framework.
 */
export const GRPC_STATUS: Readonly<Record<ErrorCode, number>> = {
  invalid_argument: 3,
  deadline_exceeded: 4,
  not_found: 5,
  already_exists: 6,
  permission_denied: 7,
  resource_exhausted: 8,
  failed_precondition: 9,
  aborted: 10,
  unimplemented: 12,
  internal: 13,
  unavailable: 14,
  unauthenticated: 16,
};

export function grpcStatusOf(code: ErrorCode): number {
  return GRPC_STATUS[code];
}
