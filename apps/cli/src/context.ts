import { readFileSync } from "node:fs";
import type { CallOptions } from "@connectrpc/connect";
import {
  type ClientFactory,
  type Clients,
  createClients,
  DEFAULT_SERVER,
  normalizeServerUrl,
} from "./client.js";
import { usageError } from "./errors.js";
import { formatJson, type OutputFormat, type Plain } from "./output.js";
import { parseDuration } from "./parse.js";

export interface Writer {
  write(chunk: string): unknown;
}

/** What the program needs from the outside world; tests pass their own. */
export interface ProgramDeps {
  out: Writer;
  err: Writer;
  env: Record<string, string | undefined>;
  /** Creates the API clients; defaults to Connect clients over gRPC/HTTP2. */
  clientFactory?: ClientFactory;
  /** The clock, for relative times. */
  now?: () => Date;
  /** How often `--wait` polls GetVolume when the watch stream is not available (default 500 ms). */
  pollIntervalMs?: number;
}

/** The options every command accepts (defined on the root program). */
export interface GlobalOptions {
  server?: string;
  token?: string;
  /** PEM file of the CA to trust for https:// servers. */
  caFile?: string;
  timeout?: string;
  output?: OutputFormat;
}

export const DEFAULT_TIMEOUT = "30s";

/** Everything a command's action needs: where to print, how to format, and lazily created clients. */
export class Context {
  readonly out: Writer;
  readonly err: Writer;
  readonly output: OutputFormat;
  readonly server: string;
  readonly token: string | undefined;
  /** --ca-file or STOWAGE_CA_FILE: the CA to trust (the system's store otherwise). */
  readonly caFile: string | undefined;
  readonly timeoutMs: number;
  readonly pollIntervalMs: number;
  private readonly factory: ClientFactory;
  private readonly clock: () => Date;
  private clientSet: Clients | undefined;

  constructor(deps: ProgramDeps, globals: GlobalOptions) {
    this.out = deps.out;
    this.err = deps.err;
    this.output = globals.output ?? "table";
    this.factory = deps.clientFactory ?? createClients;
    this.clock = deps.now ?? (() => new Date());
    this.pollIntervalMs = deps.pollIntervalMs ?? 500;
    this.server = normalizeServerUrl(globals.server ?? nonEmpty(deps.env.STOWAGE_SERVER) ?? DEFAULT_SERVER);
    this.token = nonEmpty(globals.token) ?? nonEmpty(deps.env.STOWAGE_TOKEN);
    this.caFile = nonEmpty(globals.caFile) ?? nonEmpty(deps.env.STOWAGE_CA_FILE);
    this.timeoutMs = parseDuration(globals.timeout ?? DEFAULT_TIMEOUT, "--timeout");
  }

  /** The API clients, connected on first use. */
  get clients(): Clients {
    this.clientSet ??= this.factory({ baseUrl: this.server, token: this.token, ca: this.readCa() });
    return this.clientSet;
  }

  private readCa(): string | undefined {
    if (!this.caFile) return undefined;
    let pem: string;
    try {
      pem = readFileSync(this.caFile, "utf8");
    } catch (err) {
      throw usageError(`--ca-file ${this.caFile} cannot be read: ${(err as Error).message}`);
    }
    if (!pem.includes("-----BEGIN CERTIFICATE-----"))
      throw usageError(
        `--ca-file ${this.caFile} holds no PEM certificate (\`stowage-controller ca-cert\` prints the CA)`,
      );
    return pem;
  }

  /** Options for one unary call: the --timeout deadline. */
  call(extra: CallOptions = {}): CallOptions {
    return { timeoutMs: this.timeoutMs, ...extra };
  }

  now(): Date {
    return this.clock();
  }

  /** How tables and detail views render: the output format and the current time. */
  view(): { format: OutputFormat; now: Date } {
    return { format: this.output, now: this.clock() };
  }

  get json(): boolean {
    return this.output === "json";
  }

  print(text: string): void {
    this.out.write(text.endsWith("\n") ? text : `${text}\n`);
  }

  printJson(value: Plain): void {
    this.out.write(formatJson(value));
  }

  /** A line on stderr: progress and notes that must not pollute piped output. */
  note(text: string): void {
    this.err.write(text);
  }

  close(): void {
    this.clientSet?.close();
    this.clientSet = undefined;
  }
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}
