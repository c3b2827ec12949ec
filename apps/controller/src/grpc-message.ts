import type http2 from "node:http2";

/**
 * The gRPC spec percent-encodes `grpc-message` minimally (only '%' and bytes outside printable ASCII).
 * Connect-ES encodes it with encodeURIComponent, and @grpc/grpc-js decodes with decodeURI, which leaves "/",
 * ":" and "," escaped: a grpc-js client would read `volume name "..%2Fx"`. Re-encoding to the minimal form
 * makes every client read the message as written.
 */
export function minimalGrpcMessage(value: string): string {
  let text: string;
  try {
    text = decodeURIComponent(value);
  } catch {
    return value;
  }
  let out = "";
  for (const byte of Buffer.from(text, "utf8")) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

type Headers = Record<string, string | string[] | number | undefined>;

function fix(headers: unknown): unknown {
  if (headers && typeof headers === "object" && !Array.isArray(headers)) {
    const h = headers as Headers;
    const m = h["grpc-message"];
    if (typeof m === "string") return { ...h, "grpc-message": minimalGrpcMessage(m) };
  }
  return headers;
}

export function withMinimalGrpcMessage(
  handler: (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
): (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void {
  return (req, res) => {
    const writeHead = res.writeHead.bind(res) as (...args: unknown[]) => http2.Http2ServerResponse;
    const addTrailers = res.addTrailers.bind(res);
    (res as { writeHead: (...args: unknown[]) => http2.Http2ServerResponse }).writeHead = (
      ...args: unknown[]
    ) => writeHead(...args.map((a, i) => (i > 0 ? fix(a) : a)));
    res.addTrailers = (t) => addTrailers(fix(t) as http2.OutgoingHttpHeaders);
    handler(req, res);
  };
}
