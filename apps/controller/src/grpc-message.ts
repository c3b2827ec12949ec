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

/** gRPC INTERNAL and INVALID_ARGUMENT. */
const INTERNAL = "13";
const INVALID_ARGUMENT = "3";

/**
 * Connect-ES answers a request body that is not valid protobuf with INTERNAL ("parse binary: premature EOF"),
 * before any interceptor sees the call; it is the caller's error, so it is INVALID_ARGUMENT here. (A JSON body
 * that does not parse is already INVALID_ARGUMENT in Connect-ES.)
 */
export function statusOfUndecodable(status: string, message: string): string {
  if (status !== INTERNAL) return status;
  let text = message;
  try {
    text = decodeURIComponent(message);
  } catch {}
  return text.startsWith("parse binary:") ? INVALID_ARGUMENT : status;
}

function fix(headers: unknown): unknown {
  if (headers && typeof headers === "object" && !Array.isArray(headers)) {
    const h = headers as Headers;
    const m = h["grpc-message"];
    if (typeof m === "string") {
      const status = h["grpc-status"];
      return {
        ...h,
        ...(status === undefined ? {} : { "grpc-status": statusOfUndecodable(String(status), m) }),
        "grpc-message": minimalGrpcMessage(m),
      };
    }
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
