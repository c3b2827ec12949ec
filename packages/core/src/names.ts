import { invalidArgument } from "./errors.js";

/** Names of volumes, snapshots, pools and hosts: never a path, never a shell word (docs/architecture.md, invariant 4). */
export const NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export function isValidName(value: string): boolean {
  return NAME_PATTERN.test(value) && value !== "." && value !== ".." && !value.includes("..");
}

/** Throws `invalid_argument` unless `value` is a valid name; `what` names the field in the message. */
export function validateName(what: string, value: string): string {
  if (value === "") throw invalidArgument(`${what} is required`, { field: what });
  if (!isValidName(value)) {
    throw invalidArgument(
      `${what} ${JSON.stringify(value.slice(0, 80))} is not valid: use 1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, and no '..'`,
      { field: what },
    );
  }
  return value;
}

/** Label keys and values (Kubernetes-like, but lowercase-insensitive-free): bounded and printable. */
const LABEL_KEY = /^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$/;
const LABEL_VALUE = /^[A-Za-z0-9._-]{0,63}$/;

export function validateLabels(labels: Record<string, string>): Record<string, string> {
  const entries = Object.entries(labels);
  if (entries.length > 64) throw invalidArgument("at most 64 labels are allowed", { field: "labels" });
  for (const [k, v] of entries) {
    if (!LABEL_KEY.test(k))
      throw invalidArgument(`label key ${JSON.stringify(k)} is not valid`, { field: "labels" });
    if (!LABEL_VALUE.test(v)) {
      throw invalidArgument(`label value ${JSON.stringify(v)} for ${k} is not valid`, { field: "labels" });
    }
  }
  return labels;
}
