import { invalidArgument } from "@stowage/core";

/** An NFS export as a netfs pool names it: `nfs://server/path`. */
export interface NetfsShare {
  /** Host name or IPv4 address, lower case. */
  host: string;
  /** The export's absolute path, without a trailing slash ("/export", "/srv/vm"). */
  exportPath: string;
  /** `nfs://host/path`: the one name every host gives the share (PoolReport.share), and the images' URL prefix. */
  url: string;
}

const HOST = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;
const SEGMENT = /^[A-Za-z0-9._-]{1,255}$/;

/**
 * Parses and checks a share URL: the scheme nfs, a host (name or IPv4) and an absolute path of plain names,
 * nothing else. No user info, port, query or fragment: qemu's nfs driver (libnfs, qemu 7.2) takes the
 * URL of every image as is and refuses parameters it does not know, and the ports come from the portmapper.
 */
export function parseNetfsUrl(raw: string, field = "url"): NetfsShare {
  const bad = (why: string) =>
    invalidArgument(
      `netfs ${field} ${JSON.stringify(raw.slice(0, 200))} ${why}; expected nfs://server/path`,
      {
        field,
      },
    );
  if (typeof raw !== "string" || !raw.startsWith("nfs://")) throw bad("is not an nfs:// URL");
  const rest = raw.slice("nfs://".length);
  const slash = rest.indexOf("/");
  if (slash <= 0) throw bad("has no server or no path");
  const host = rest.slice(0, slash).toLowerCase();
  const path = rest.slice(slash);
  if (host.includes("@")) throw bad("carries user info");
  if (host.includes(":") || host.includes("[")) throw bad("carries a port or an IPv6 address");
  if (!HOST.test(host)) throw bad("has a bad server name");
  if (/[?#]/.test(path)) throw bad("carries a query or fragment");
  const segments = path.split("/").slice(1);
  if (segments.at(-1) === "") segments.pop();
  if (segments.length === 0) throw bad("exports the server's root");
  for (const s of segments) {
    if (!SEGMENT.test(s) || s === "." || s === "..")
      throw bad(`has a bad path segment ${JSON.stringify(s.slice(0, 80))}`);
  }
  const exportPath = `/${segments.join("/")}`;
  return { host, exportPath, url: `nfs://${host}${exportPath}` };
}
