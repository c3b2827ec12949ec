import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  AuditService,
  FindingService,
  HostService,
  OperationService,
  PlacementService,
  PoolService,
  SnapshotService,
  TokenService,
  VolumeService,
} from "@stowage/proto";
import { usageError } from "./errors.js";

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
  /** Closes the HTTP/2 connection. */
  close(): void;
}

export interface ClientOptions {
  /** A normalised URL, see normalizeServerUrl. */
  baseUrl: string;
  /** Sent as `authorization: Bearer <token>` when set. */
  token?: string | undefined;
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

/** Connect clients for the public API over the gRPC protocol on HTTP/2 (h2c for http:// URLs). */
export const createClients: ClientFactory = ({ baseUrl, token }) => {
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({
    baseUrl,
    // gRPC is always HTTP/2 here (GrpcTransportOptions has no httpVersion); http:// URLs use h2c.
    sessionManager,
    interceptors: token ? [bearer(token)] : [],
  });
  return {
    hosts: createClient(HostService, transport),
    pools: createClient(PoolService, transport),
    volumes: createClient(VolumeService, transport),
    placement: createClient(PlacementService, transport),
    operations: createClient(OperationService, transport),
    snapshots: createClient(SnapshotService, transport),
    findings: createClient(FindingService, transport),
    tokens: createClient(TokenService, transport),
    audit: createClient(AuditService, transport),
    close: () => sessionManager.abort(),
  };
};
