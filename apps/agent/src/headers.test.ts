import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { LightHeaders } from "./headers.js";

/** The same steps on LightHeaders and on Node's own Headers (the oracle): the same answers. */
function both(steps: (h: Headers | LightHeaders) => unknown) {
  const mine = new LightHeaders();
  const node = new Headers();
  return { mine: steps(mine), node: steps(node) };
}
const dump = (h: Headers | LightHeaders) => [...h];

describe("LightHeaders, against Node's Headers", () => {
  it("appends, sets, gets, deletes and iterates as the Fetch standard says", () => {
    const r = both((h) => {
      h.append("Content-Type", "application/grpc");
      h.append("grpc-timeout", " 5S ");
      h.append("X-Multi", "a");
      h.append("x-multi", "b");
      h.set("User-Agent", "stowage");
      const seen: string[] = [];
      h.forEach((v, k) => {
        seen.push(`${k}=${v}`);
      });
      const out = {
        all: dump(h),
        multi: h.get("X-MULTI"),
        missing: h.get("nope"),
        has: [h.has("content-type"), h.has("nope")],
        keys: [...h.keys()],
        values: [...h.values()],
        seen,
      };
      h.delete("x-multi");
      h.set("grpc-timeout", "1S");
      return { ...out, after: dump(h) };
    });
    expect(r.mine).toEqual(r.node);
  });

  it("copies from a Headers, an array of pairs and a record, and refuses what the standard refuses", () => {
    const seed = new LightHeaders({ A: "1", b: "2" });
    expect(dump(new LightHeaders(seed))).toEqual(dump(new Headers({ A: "1", b: "2" })));
    expect(
      dump(
        new LightHeaders([
          ["k", "v"],
          ["K", "w"],
        ]),
      ),
    ).toEqual(
      dump(
        new Headers([
          ["k", "v"],
          ["K", "w"],
        ]),
      ),
    );
    const bads: [string, string][] = [
      ["bad name", "v"],
      ["x", "a\nb"],
      ["", "v"],
    ];
    for (const bad of bads) {
      expect(() => new Headers([bad])).toThrow(TypeError);
      expect(() => new LightHeaders([bad])).toThrow(TypeError);
    }
  });

  it("is what the agent process uses, and Node's undici is never loaded by a registration", async () => {
    // A fresh node: install it, make a connect gRPC call (it fails to connect; the headers are built first),
    // and report whether Headers is ours. Resident memory is compared in docs/operating.md, not here.
    const script = `
      import { installLightHeaders } from "./apps/agent/src/headers.ts";
      installLightHeaders();
      const { createClient } = await import("@connectrpc/connect");
      const { createGrpcTransport } = await import("@connectrpc/connect-node");
      const { AgentService } = await import("@stowage/proto");
      const c = createClient(AgentService, createGrpcTransport({ baseUrl: "http://127.0.0.1:1" }));
      await c.registerAgent({}).catch(() => {});
      const undici = process.moduleLoadList.some((m) => m.includes("undici"));
      console.log(globalThis.Headers.name, undici ? "undici-loaded" : "no-undici");
    `;
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      cwd: new URL("../../../", import.meta.url).pathname,
      encoding: "utf8",
    });
    expect(out.trim()).toBe("LightHeaders no-undici");
  });
});
