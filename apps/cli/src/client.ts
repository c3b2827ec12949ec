import { type Client, Code, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  AuditService,
  ExportService,
  FindingService,
  HostService,
  OperationService,
  PlacementService,
  PoolService,
  SnapshotService,
  TokenService,
  VolumeService,
} from "@stowage/proto";
import { CliError, usageError } from "./errors.js";

/** Where `npm run up`'s local cluster listens. */
export const DEFAULT_SERVER = "http://127.0.0.1:7480";

export interface Clients {
  readonly hosts: Client<typeof HostService>;
  readonly pools: Client<typeof PoolService>;
  readonly volumes: Client<typeof VolumeService>;
  readonly placement: Client<typeof PlacementService>;
  readonly operations: Client<typeof OperationService>;
  readonly snapshots: Client<typeof SnapshotService>;
  readonly findings: Client<typeof FindingService>;
  readonly tokens: Client<typeof TokenService>;
  readonly audit: Client<typeof AuditService>;
  readonly exports: Client<typeof ExportService>;
  /** Closes the HTTP/2 connection. */
  close(): void;
}

export interface ClientOptions {
  /** A normalised URL, see normalizeServerUrl. */
  baseUrl: string;
  /** Sent as `authorization: Bearer <token>` when set. */
  token?: string | undefined;
  /** PEM of the CA(s) to trust for https:// (--ca-file); the system's store when unset. */
  ca?: string | undefined;
}

export type ClientFactory = (options: ClientOptions) => Clients;

/**
 * Accepts `http://host:port`, `https://host:port` or a bare `host:port` (taken as plaintext h2c, like the local
 * cluster) and returns a URL without a trailing slash.
 */
export function normalizeServerUrl(input: string): string {
  const raw = input.trim();
  if (raw === "") throw usageError("the server address is empty: pass --server URL or set STOWAGE_SERVER");
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw usageError(
      `server address ${JSON.stringify(input)} is not valid: write it like http://127.0.0.1:7480 or node1:7480`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw usageError(`server address ${JSON.stringify(input)} must use http:// (h2c) or https://`);
  }
  if (url.hostname === "") throw usageError(`server address ${JSON.stringify(input)} has no host`);
  return `${url.protocol}//${url.host}${url.pathname.replace(/\/+$/, "")}`;
}

function bearer(token: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

/** What Node's TLS layer says when it does not trust the server's certificate (or its name). */
const TLS_TRUST_CODES = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_SIGNATURE_FAILURE",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/** The TLS trust failure somewhere in an error's cause chain, if any. */
export function tlsTrustFailure(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  let cur: unknown = err;
  while (cur instanceof Error && !seen.has(cur)) {
    seen.add(cur);
    const code = (cur as { code?: unknown }).code;
    if (typeof code === "string" && TLS_TRUST_CODES.has(code)) return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

/** A TLS trust failure as one clear line (the cause is kept for debugging); any other error as it is. */
function explainTls(err: unknown, baseUrl: string, caGiven: boolean): unknown {
  const code = tlsTrustFailure(err);
  if (!code) return err;
  return new CliError(
    Code.Unavailable,
    code === "ERR_TLS_CERT_ALTNAME_INVALID"
      ? `the certificate of ${baseUrl} does not name that address: connect by a name or address it was issued for (the controller's STOWAGE_TLS_SANS)`
      : `certificate not trusted (${code}): pass --ca-file FILE or set STOWAGE_CA_FILE to the cluster CA (\`stowage-controller ca-cert\` prints it)${caGiven ? "; the CA file given did not sign the controller's certificate" : ""}`,
    { cause: err },
  );
}

/**
 * A client whose calls report TLS trust failures clearly (an interceptor cannot: the transport wraps what it
 * throws). Unary calls are promises; server streams are async iterables.
 */
function withTlsErrors<T extends object>(client: T, baseUrl: string, caGiven: boolean): T {
  const fix = (err: unknown) => explainTls(err, baseUrl, caGiven);
  return new Proxy(client, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        const result = value.apply(target, args);
        if (result instanceof Promise)
          return result.catch((err) => {
            throw fix(err);
          });
        if (result && typeof result === "object" && Symbol.asyncIterator in result) {
          return (async function* () {
            try {
              yield* result as AsyncIterable<unknown>;
            } catch (err) {
              throw fix(err);
            }
          })();
        }
        return result;
      };
    },
  });
}

/**
 * Connect clients for the public API over the gRPC protocol on HTTP/2 (h2c for http:// URLs, TLS for https://,
 * trusting `ca` when given).
 */
export const createClients: ClientFactory = ({ baseUrl, token, ca }) => {
  const nodeOptions = ca ? { ca } : {};
  const sessionManager = new Http2SessionManager(baseUrl, undefined, nodeOptions);
  const transport = createGrpcTransport({
    baseUrl,
    // gRPC is always HTTP/2 here (GrpcTransportOptions has no httpVersion); http:// URLs use h2c.
    sessionManager,
    nodeOptions,
    interceptors: token ? [bearer(token)] : [],
  });
  const client = <S extends Parameters<typeof createClient>[0]>(service: S) =>
    withTlsErrors(createClient(service, transport), baseUrl, Boolean(ca));
  return {
    hosts: client(HostService),
    pools: client(PoolService),
    volumes: client(VolumeService),
    placement: client(PlacementService),
    operations: client(OperationService),
    snapshots: client(SnapshotService),
    findings: client(FindingService),
    tokens: client(TokenService),
    audit: client(AuditService),
    exports: client(ExportService),
    close: () => sessionManager.abort(),
  };
};
