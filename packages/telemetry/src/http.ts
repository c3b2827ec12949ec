import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { Registry } from "prom-client";

export interface OpsServerOptions {
  host: string;
  port: number;
  registry: Registry;
  /** Liveness: the process runs. Readiness: it can do its work (database, NATS). */
  ready: () => Promise<{ ok: boolean; detail: Record<string, unknown> }>;
  /** Serve HTTPS with this certificate and key (PEM) instead of plain HTTP. */
  tls?: { cert: string; key: string };
}

/** The /metrics, /healthz and /readyz endpoints, on their own HTTP/1.1 port (HTTPS with `tls`). */
export async function startOpsServer(
  opts: OpsServerOptions,
): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    try {
      const url = new URL(req.url ?? "/", "http://x");
      if (url.pathname === "/metrics") {
        const body = await opts.registry.metrics();
        res.writeHead(200, { "content-type": opts.registry.contentType });
        res.end(body);
      } else if (url.pathname === "/healthz") {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ status: "ok" }));
      } else if (url.pathname === "/readyz") {
        const r = await opts.ready();
        res.writeHead(r.ok ? 200 : 503, { "content-type": "application/json" });
        res.end(JSON.stringify({ status: r.ok ? "ok" : "unavailable", ...r.detail }));
      } else {
        res.writeHead(404, { "content-type": "text/plain" });
        res.end("not found: try /metrics, /healthz or /readyz\n");
      }
    } catch (err) {
      res.writeHead(500, { "content-type": "text/plain" });
      res.end(String(err));
    }
  };
  const server: Server = opts.tls
    ? createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key, minVersion: "TLSv1.2" }, handle)
    : createServer(handle);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : opts.port;
  return { server, port, close: () => new Promise((r) => server.close(() => r())) };
}
