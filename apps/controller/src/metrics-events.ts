import { OPERATION_KINDS } from "@stowage/core";
import { counter, histogram, type Registry, withOutcomes } from "@stowage/telemetry";

export const OPERATION_RESULTS = ["succeeded", "failed"] as const;

/** The gRPC API's requests and latency, counted by the interceptor. */
export function apiMetrics(registry: Registry) {
  return {
    apiRequests: counter(
      registry,
      "stowage_api_requests_total",
      'gRPC API requests by method and status code ("ok", or the gRPC code of the error: errors are code!="ok").',
      ["method", "code"],
    ),
    apiDuration: histogram(
      registry,
      "stowage_api_request_duration_seconds",
      "gRPC API request latency by method.",
      ["method"],
    ),
  };
}

/** Operations published and finished, every kind exported at 0 from the start. */
export function operationMetrics(registry: Registry) {
  const operations = withOutcomes(
    counter(
      registry,
      "stowage_operations_total",
      "Operations finished (their result applied), by kind and result (succeeded, failed).",
      ["kind", "result"],
    ),
    "result",
    OPERATION_RESULTS,
  );
  const operationDuration = histogram(
    registry,
    "stowage_operation_duration_seconds",
    "Time from an operation's creation to its result being applied, by kind.",
    ["kind"],
  );
  const published = counter(
    registry,
    "stowage_operations_published_total",
    "Operations published to JetStream by the relay (re-sends included).",
    ["kind"],
  );
  const lateResults = counter(
    registry,
    "stowage_operations_late_results_total",
    "Successes that arrived for operations already failed (at their deadline, or by an earlier attempt), by what they did: adopted (the database now shows it), finding (an orphan finding reports it), noted (kept on the volume's error), none.",
    ["outcome"],
  );
  for (const outcome of ["adopted", "finding", "noted", "none"]) lateResults.inc({ outcome }, 0);
  for (const kind of OPERATION_KINDS) {
    operations.inc({ kind, result: "succeeded" }, 0);
    operationDuration.zero({ kind });
    published.inc({ kind }, 0);
  }
  return { operations, operationDuration, published, lateResults };
}

/** Placement decisions, the filters that refused pools, decision time and the ledger's refusals. */
export function schedulerMetrics(registry: Registry) {
  const schedulerDecisions = counter(
    registry,
    "stowage_scheduler_decisions_total",
    "Placement decisions by result (placed, refused: no pool fits, conflict: the ledger refused the chosen pool).",
    ["result"],
  );
  for (const result of ["placed", "refused", "conflict"]) schedulerDecisions.inc({ result }, 0);
  return {
    schedulerDecisions,
    schedulerRefusals: counter(
      registry,
      "stowage_scheduler_refusals_total",
      "Candidate pools refused, by the filter that refused them (the reason).",
      ["filter"],
    ),
    schedulerDuration: histogram(
      registry,
      "stowage_scheduler_decision_duration_seconds",
      "Time to make one placement decision (in memory).",
      [],
      [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1],
    ),
    reservationConflicts: counter(
      registry,
      "stowage_ledger_reservation_conflicts_total",
      "Reservations refused by the ledger after the scheduler chose a pool (placed again).",
    ),
  };
}
