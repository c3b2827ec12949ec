import { describe, expect, it } from "vitest";
import { NETFS_LAYOUT_ROOT, netfsToolArgv } from "./index.js";
import { parseNetfsUrl } from "./url.js";

describe("parseNetfsUrl", () => {
  it("keeps a share's URL canonical: host in lower case, no trailing slash", () => {
    expect(parseNetfsUrl("nfs://NAS.Example/srv/vm/")).toEqual({
      host: "nas.example",
      exportPath: "/srv/vm",
      url: "nfs://nas.example/srv/vm",
    });
    expect(parseNetfsUrl("nfs://203.0.113.13/vm").url).toBe("nfs://203.0.113.13/vm");
  });

  it("refuses user info, ports, queries, fragments, dot segments, odd characters and the server's root", () => {
    for (const bad of [
      "nfs://u@h/x",
      "nfs://h:2049/x",
      "nfs://[::1]/x",
      "nfs://h/x?uid=0",
      "nfs://h/x#f",
      "nfs://h/a/../b",
      "nfs://h/./b",
      "nfs://h//b",
      "nfs://h/",
      "nfs://h",
      "nfs:///x",
      "http://h/x",
      "nfs://h/a b",
      "nfs://h/a$(id)",
      "nfs://-h/x",
    ]) {
      expect(() => parseNetfsUrl(bad), bad).toThrow(/expected nfs:\/\/server\/path/);
    }
  });
});

describe("netfsToolArgv", () => {
  const share = parseNetfsUrl("nfs://203.0.113.13/vm");
  const root = `${NETFS_LAYOUT_ROOT}/203.0.113.13/vm`;

  it("turns layout paths into the images' URLs and leaves every other argument alone", () => {
    expect(
      netfsToolArgv(
        [
          "create",
          "-f",
          "qcow2",
          "-b",
          `${root}/.stowage/base-s.qcow2`,
          "-F",
          "qcow2",
          "--",
          `${root}/.stowage/tmp-v.qcow2`,
          "64M",
        ],
        root,
        share,
      ),
    ).toEqual([
      "create",
      "-f",
      "qcow2",
      "-b",
      "nfs://203.0.113.13/vm/.stowage/base-s.qcow2",
      "-F",
      "qcow2",
      "--",
      "nfs://203.0.113.13/vm/.stowage/tmp-v.qcow2",
      "64M",
    ]);
    // Not ours: another pool's layout, a local path.
    expect(netfsToolArgv([`${root}x/v.qcow2`, "/var/lib/v.qcow2"], root, share)).toEqual([
      `${root}x/v.qcow2`,
      "/var/lib/v.qcow2",
    ]);
  });

  it("opens --image-opts files through qemu's nfs driver (server and path on it)", () => {
    expect(
      netfsToolArgv([`driver=qcow2,file.driver=file,file.filename=${root}/v.qcow2`], root, share),
    ).toEqual([
      "driver=qcow2,file.driver=nfs,file.server.type=inet,file.server.host=203.0.113.13,file.path=/vm/v.qcow2",
    ]);
    expect(
      netfsToolArgv(["driver=qcow2,file.driver=file,file.filename=/local/v.qcow2"], root, share),
    ).toEqual(["driver=qcow2,file.driver=file,file.filename=/local/v.qcow2"]);
  });
});
