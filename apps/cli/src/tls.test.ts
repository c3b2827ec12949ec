import { writeFile } from "node:fs/promises";
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { HostService, TokenService } from "@stowage/proto";
import { makeTempDir } from "@stowage/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runStowctl } from "./testing/run.js";

// A test CA and a certificate it signed for 127.0.0.1, valid for a century: test data only, used nowhere else.
const CA_PEM = `-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUSMYMXNMLns2c1aud0cARnGp6t7cwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPc3Rvd2N0bCB0ZXN0IENBMCAXDTI2MTIwMzE2MDk1NloYDzIx
MjYxMTA5MTYwOTU2WjAaMRgwFgYDVQQDDA9zdG93Y3RsIHRlc3QgQ0EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAATqgboCBvcl9uFj1MsQnyAQDSilZt7NAC3w5n1n
sxt5svFqAwQ0AZPhJLaQy2F9ikrIRcAcO4F72rtAWDqskWOBo2MwYTAdBgNVHQ4E
FgQUeCfh/XHvqA3y4GO+MCZYA0q7KMowHwYDVR0jBBgwFoAUeCfh/XHvqA3y4GO+
MCZYA0q7KMowDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAgQwCgYIKoZI
zj0EAwIDSAAwRQIhAKhPq8VOVLk9NOklFBlbTJ5N92Q7wu1FYjiU3qKJiTUoAiB1
ncfQNXe0TT8kdsdTa6NXva6SMxRmvvFCiPiwhiGOZA==
-----END CERTIFICATE-----
`;
const SERVER_CERT = `-----BEGIN CERTIFICATE-----
MIIBqzCCAVGgAwIBAgIUM/9hiyIWo40Ly5mDZ9juJAWZCIQwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPc3Rvd2N0bCB0ZXN0IENBMCAXDTI2MTIwMzE2MDk1NloYDzIx
MjYxMTA5MTYwOTU2WjAaMRgwFgYDVQQDDA90ZXN0LWNvbnRyb2xsZXIwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAQsLRDMXX00GUQ9lAfh/SihyRRNq02RXQ/UhjWN
DSAQ7cObhE8WcqRynDsZrZt2Pri9TVI3uzkz5ZYFhS6HwpImo3MwcTAPBgNVHREE
CDAGhwR/AAABMBMGA1UdJQQMMAoGCCsGAQUFBwMBMAkGA1UdEwQCMAAwHQYDVR0O
BBYEFP/EwUvP0LGMO+ddheRLINFzOXPEMB8GA1UdIwQYMBaAFHgn4f1x76gN8uBj
vjAmWANKuyjKMAoGCCqGSM49BAMCA0gAMEUCIG7+1nSd1KWKSDK+2T8h0R/DYS8r
s8ihjfA866kq1/2JAiEAp+g+zwok0BkzNJaWjzoR/drZO+FpSGeiiFZfLmN/N0s=
-----END CERTIFICATE-----
`;
const SERVER_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZ4Hi3JjeiScj7gMX
PEl62B5ai6E+g2BqHfTywnFUQdKhRANCAAQsLRDMXX00GUQ9lAfh/SihyRRNq02R
XQ/UhjWNDSAQ7cObhE8WcqRynDsZrZt2Pri9TVI3uzkz5ZYFhS6HwpIm
-----END PRIVATE KEY-----
`;

/** A controller stand-in over TLS (HTTP/2), answering RevokeHost and recording what it was sent. */
describe("stowctl over https", () => {
  let server: http2.Http2SecureServer;
  let url: string;
  let tmp: Awaited<ReturnType<typeof makeTempDir>>;
  let caFile: string;
  const revokes: { hostId: string; reason: string; auth: string }[] = [];

  beforeAll(async () => {
    tmp = await makeTempDir("stowctl-tls-");
    caFile = join(tmp.path, "ca.crt");
    await writeFile(caFile, CA_PEM);
    await writeFile(join(tmp.path, "not-pem"), "hello");
    const handler = connectNodeAdapter({
      routes: (router) => {
        router.service(HostService, {
          revokeHost: (req, hc) => {
            revokes.push({
              hostId: req.hostId,
              reason: req.reason,
              auth: hc.requestHeader.get("authorization") ?? "",
            });
            return revokes.length === 1
              ? { certificatesRevoked: 2, natsUsersRevoked: 2 }
              : { certificatesRevoked: 0, natsUsersRevoked: 0 };
          },
        });
        router.service(TokenService, {});
      },
      grpc: true,
    });
    server = http2.createSecureServer({ cert: SERVER_CERT, key: SERVER_KEY }, handler);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((r) => server?.close(() => r()));
    await tmp?.cleanup();
  });

  async function stowctl(args: string[], env: Record<string, string> = {}) {
    return runStowctl(args, { STOWAGE_SERVER: url, STOWAGE_TOKEN: "adm", ...env }, {});
  }

  it("trusts the CA of --ca-file, and revokes a host (JSON and text)", async () => {
    const json = await stowctl([
      "--ca-file",
      caFile,
      "host",
      "revoke",
      "node1",
      "--reason",
      "stolen",
      "-o",
      "json",
    ]);
    expect(json).toMatchObject({ code: 0 });
    expect(JSON.parse(json.stdout)).toEqual({ hostId: "node1", certificatesRevoked: 2, natsUsersRevoked: 2 });
    expect(revokes[0]).toEqual({ hostId: "node1", reason: "stolen", auth: "Bearer adm" });
    const text = await stowctl(["host", "revoke", "node1"], { STOWAGE_CA_FILE: caFile });
    expect(text.code).toBe(0);
    expect(text.stderr).toContain("Host node1 holds no live certificate");
  });

  it("says clearly when the server's certificate is not trusted, or the CA file is not one", async () => {
    const r = await stowctl(["host", "revoke", "node1"]);
    expect(r.code).toBe(7);
    expect(r.stderr).toMatch(
      /^error: certificate not trusted \(\w+\): pass --ca-file FILE or set STOWAGE_CA_FILE/,
    );
    const missing = await stowctl(["--ca-file", join(tmp.path, "absent.crt"), "host", "revoke", "node1"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("cannot be read");
    const notPem = await stowctl(["--ca-file", join(tmp.path, "not-pem"), "host", "revoke", "node1"]);
    expect(notPem.code).toBe(2);
    expect(notPem.stderr).toContain("holds no PEM certificate");
    expect((await stowctl(["host", "revoke", "Bad Host"])).code).toBe(2);
    expect(revokes).toHaveLength(2);
  });
});
