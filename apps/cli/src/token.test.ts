import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { TokenKind, TokenRole, TokenSchema } from "@stowage/proto";
import { afterEach, describe, expect, it } from "vitest";
import {
  type FakeController,
  type FakeOverrides,
  NOW,
  startFakeController,
} from "./testing/fake-controller.js";
import { runStowctl } from "./testing/run.js";

let fake: FakeController | undefined;
afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

async function stowctl(args: string[]) {
  return runStowctl(args, { STOWAGE_SERVER: fake?.url, STOWAGE_TOKEN: "adm" });
}

const SECRET = `stw_${"ab".repeat(32)}`;
const TOKEN = create(TokenSchema, {
  id: "tok-0192f7c4e5a87b3c9d1e2f3a4b5c6d7e",
  name: "ci",
  role: TokenRole.OPERATOR,
  createdBy: "root",
  createdAt: timestampFromDate(new Date(NOW.getTime() - 60_000)),
});
const tokens: FakeOverrides["tokens"] = {
  createToken: async (req) => ({ token: { ...TOKEN, name: req.name, role: req.role }, secret: SECRET }),
  listTokens: async () => ({ tokens: [TOKEN] }),
  revokeToken: async () => ({ token: { ...TOKEN, revokedAt: timestampFromDate(NOW) } }),
};

describe("token", () => {
  it("creates a token, sends name, role and ttl, and prints the secret once", async () => {
    fake = await startFakeController({ tokens });
    const r = await stowctl(["token", "create", "--name", "ci", "--role", "operator", "--ttl", "24h"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${SECRET}\n`);
    expect(r.stderr).toContain("shown only now");
    const [req] = fake.requests<{ name: string; role: number; ttl: { seconds: bigint } }>("createToken");
    expect(req).toMatchObject({ name: "ci", role: TokenRole.OPERATOR, ttl: { seconds: 86_400n } });
    expect(fake.calls[0]!.authorization).toBe("Bearer adm");
    const json = await stowctl(["token", "create", "--name", "ci", "--role", "viewer", "-o", "json"]);
    expect(JSON.parse(json.stdout)).toMatchObject({ secret: SECRET, token: { name: "ci", role: "viewer" } });
  });

  it("lists tokens without secrets and revokes by name", async () => {
    fake = await startFakeController({ tokens });
    const list = await stowctl(["token", "list"]);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/NAME\s+ID\s+KIND\s+ROLE\s+HOST/);
    expect(list.stdout).toContain("ci");
    expect(list.stdout).not.toContain("stw_");
    const rev = await stowctl(["token", "revoke", "ci"]);
    expect(rev.code).toBe(0);
    expect(rev.stderr).toContain("revoked");
    expect(fake.requests("revokeToken")).toEqual([expect.objectContaining({ token: "ci" })]);
  });

  it("refuses bad flags before calling the controller", async () => {
    fake = await startFakeController({ tokens });
    expect((await stowctl(["token", "create", "--name", "ci", "--role", "root"])).code).toBe(2);
    expect(
      (await stowctl(["token", "create", "--name", "ci", "--role", "viewer", "--ttl", "soon"])).code,
    ).toBe(2);
    expect((await stowctl(["token", "create", "--name", "Bad Name", "--role", "viewer"])).code).toBe(2);
    expect((await stowctl(["token", "create", "--name", "ci"])).code).toBe(2);
    expect((await stowctl(["token", "create", "--host", "node1", "--role", "admin"])).code).toBe(2);
    expect((await stowctl(["token", "create", "--host", "Bad Host"])).code).toBe(2);
    expect((await stowctl(["token", "create", "--host", "node1", "--ttl", "25h"])).code).toBe(2);
    expect(fake.calls).toEqual([]);
  });

  it("creates a join token for a host, prints its secret once, and lists it with its host and use", async () => {
    const JOIN_SECRET = `stw_join_${"cd".repeat(32)}`;
    const JOIN = create(TokenSchema, {
      ...TOKEN,
      name: "join-node1-abc123",
      role: TokenRole.UNSPECIFIED,
      kind: TokenKind.JOIN,
      host: "node1",
      expiresAt: timestampFromDate(new Date(NOW.getTime() + 3600_000)),
      usedAt: timestampFromDate(new Date(NOW.getTime() - 5_000)),
    });
    fake = await startFakeController({
      tokens: {
        ...tokens,
        createToken: async () => ({ token: JOIN, secret: JOIN_SECRET }),
        listTokens: async () => ({ tokens: [TOKEN, JOIN] }),
      },
    });
    const r = await stowctl(["token", "create", "--host", "node1", "--ttl", "1h"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${JOIN_SECRET}\n`);
    expect(r.stderr).toContain("Join token join-node1-abc123");
    expect(r.stderr).toContain("STOWAGE_JOIN_TOKEN");
    expect(r.stderr).not.toContain(JOIN_SECRET);
    const [req] = fake.requests<{ name: string; host: string; ttl: { seconds: bigint } }>("createToken");
    expect(req).toMatchObject({ name: "", host: "node1", ttl: { seconds: 3600n } });
    const json = await stowctl(["token", "create", "--host", "node1", "-o", "json"]);
    expect(JSON.parse(json.stdout)).toMatchObject({
      secret: JOIN_SECRET,
      token: { kind: "join", host: "node1" },
    });
    const list = await stowctl(["token", "list", "--all"]);
    const line = list.stdout.split("\n").find((l) => l.startsWith("join-node1"))!;
    expect(line).toMatch(/join-node1-abc123\s+tok-\S+\s+join\s+-\s+node1\s+root/);
    expect(line).toContain("5s ago");
  });
});
