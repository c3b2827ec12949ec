import { chmod, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StowageError } from "@stowage/core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import {
  createToolRunner,
  parseJsonOutput,
  STDERR_TAIL_BYTES,
  ToolError,
  type ToolInvocationEvent,
  ToolOutputError,
} from "./runner.js";

let bin: string;

/** Gone or a zombie: PID 1 here reaps orphans lazily (BACKENDS.md, harness notes). */
async function isGone(pid: number): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    const status = await readFile(`/proc/${pid}/status`, "utf8").catch(() => "");
    if (status === "" || /^State:\s+Z/m.test(status)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

async function tool(name: string, body: string): Promise<void> {
  const p = join(bin, name);
  await writeFile(p, `#!/bin/bash\n${body}\n`);
  await chmod(p, 0o755);
}

beforeAll(async () => {
  bin = await mkdtemp(join(tmpdir(), "stowage-runner-"));
  await tool("print-args", `printf '%s\\0' "$@"`);
  await tool("print-env", `printf '%s|%s|%s' "$LC_ALL" "$STOWAGE_X" "$LANG"`);
  await tool("fail-loud", `echo "fail-loud: cannot open '/nope': No such file" >&2; exit 4`);
  await tool("exit-3", `echo '{"ok":true}'; exit 3`);
  await tool("spew", `head -c 200000 /dev/zero | tr '\\0' a`);
  await tool("spew-stderr", `head -c 20000 /dev/zero | tr '\\0' e >&2; echo THE-END >&2; exit 1`);
  // The child sleep inherits the pipes: only killing the whole process group ends the run.
  await tool("hang", `echo started >&2; sleep 300 & wait`);
  await tool("cat-stdin", `cat`);
});

afterAll(async () => {
  await rm(bin, { recursive: true, force: true });
});

describe("createToolRunner", () => {
  it("passes argv verbatim, with no shell in between", async () => {
    const marker = join(bin, "pwned");
    const argv = [
      "a b",
      "x;y",
      `$(touch ${marker})`,
      `\`touch ${marker}\``,
      "'q'",
      '"dq"',
      "*",
      "",
      "-n",
      "ü\ttab",
    ];
    const r = await createToolRunner({ pathPrefix: [bin] }).run("print-args", argv);
    expect(r.stdout.split("\0").slice(0, -1)).toEqual(argv);
    expect(r.exitCode).toBe(0);
    await expect(stat(marker)).rejects.toThrow(/ENOENT/);
  });

  it("forces LC_ALL=C and passes extra env", async () => {
    const runner = createToolRunner({ pathPrefix: [bin], env: { STOWAGE_X: "1", LC_ALL: "de_DE.UTF-8" } });
    const r = await runner.run("print-env", []);
    expect(r.stdout.split("|").slice(0, 2)).toEqual(["C", "1"]);
  });

  it("feeds input on stdin", async () => {
    const r = await createToolRunner({ pathPrefix: [bin] }).run("cat-stdin", [], { input: "hello\n" });
    expect(r.stdout).toBe("hello\n");
  });

  it("reports a failure with tool, argv, exit code and stderr", async () => {
    const runner = createToolRunner({ pathPrefix: [bin] });
    const err = await runner.run("fail-loud", ["create", "-f", "qcow2", "/x y"]).catch((e) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect(err).toBeInstanceOf(StowageError);
    expect(err.code).toBe("internal");
    expect(err.tool).toBe("fail-loud");
    expect(err.argv).toEqual(["create", "-f", "qcow2", "/x y"]);
    expect(err.exitCode).toBe(4);
    expect(err.timedOut).toBe(false);
    expect(err.stderr).toMatch(/cannot open/);
    expect(err.message).toBe(
      "fail-loud create -f qcow2 '/x y' exited with code 4: fail-loud: cannot open '/nope': No such file",
    );
  });

  it("keeps only the tail of a long stderr", async () => {
    const err = await createToolRunner({ pathPrefix: [bin] })
      .run("spew-stderr", [])
      .catch((e) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect(Buffer.byteLength(err.stderr)).toBeLessThanOrEqual(STDERR_TAIL_BYTES);
    expect(err.stderr).toMatch(/THE-END\n$/);
  });

  it("accepts allowed non-zero exit codes", async () => {
    const r = await createToolRunner({ pathPrefix: [bin] }).run("exit-3", [], { allowExitCodes: [2, 3] });
    expect(r.exitCode).toBe(3);
    expect(JSON.parse(r.stdout)).toEqual({ ok: true });
  });

  it("kills a hung tool and its children at the timeout", async () => {
    const events: ToolInvocationEvent[] = [];
    const runner = createToolRunner({
      pathPrefix: [bin],
      killGraceMs: 200,
      onInvocation: (e) => events.push(e),
    });
    const t0 = Date.now();
    const err = await runner.run("hang", ["x"], { timeoutMs: 300 }).catch((e) => e);
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(err).toBeInstanceOf(ToolError);
    expect(err.code).toBe("deadline_exceeded");
    expect(err.timedOut).toBe(true);
    expect(err.message).toMatch(/^hang x timed out after 300 ms and was killed: started/);
    expect(events).toEqual([expect.objectContaining({ tool: "hang", timedOut: true, ok: false })]);
  });

  it("kills running tools when the process exits", async () => {
    // A separate Node process starts a hung tool, then exits; its tool must not outlive it.
    const pids = join(bin, "pids");
    const probe = join(bin, "exit-probe.mjs");
    await writeFile(
      probe,
      `const { createToolRunner } = await import(process.argv[2]);
createToolRunner({ pathPrefix: [process.argv[3]] }).run("hang-pid", [process.argv[4]]).catch(() => {});
setTimeout(() => process.exit(0), 500);
`,
    );
    await tool("hang-pid", `echo $$ > "$1"; sleep 300 & echo $! >> "$1"; wait`);
    await createToolRunner().run(
      "node",
      [
        "--conditions=stowage-source",
        "--import",
        "tsx",
        probe,
        join(import.meta.dirname, "runner.ts"),
        bin,
        pids,
      ],
      { timeoutMs: 20_000 },
    );
    const started = (await readFile(pids, "utf8")).trim().split("\n").map(Number);
    expect(started).toHaveLength(2);
    for (const pid of started) expect(await isGone(pid)).toBe(true);
  });

  it("bounds captured output", async () => {
    const runner = createToolRunner({ pathPrefix: [bin], maxOutputBytes: 4096 });
    const err = await runner.run("spew", []).catch((e) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect(err.message).toMatch(/printed more than 4096 bytes/);
  });

  it("says which package provides a missing tool", async () => {
    const runner = createToolRunner({ pathPrefix: [bin], env: {} });
    const err = await runner.run("stowage-no-such-tool", []).catch((e) => e);
    expect(err).toBeInstanceOf(ToolError);
    expect(err.code).toBe("failed_precondition");
    expect(err.message).toMatch(/^tool stowage-no-such-tool not found on PATH; install it/);

    // With a PATH that lacks it, qemu-img gets the Debian package name.
    const bare = createToolRunner({ pathPrefix: [bin] });
    const saved = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      const err2 = await createToolRunner({ pathPrefix: [bin] })
        .run("qemu-img", ["--version"])
        .catch((e) => e);
      expect(err2.message).toMatch(/^tool qemu-img not found on PATH; install package qemu-utils/);
    } finally {
      process.env.PATH = saved;
    }
    await expect(bare.run("qemu-img", ["--version"])).resolves.toMatchObject({ exitCode: 0 });
  });

  it("refuses tool names that are paths", async () => {
    await expect(createToolRunner().run("/bin/sh", ["-c", "id"])).rejects.toMatchObject({
      code: "invalid_argument",
    });
  });

  it("calls onInvocation for every run, and survives a throwing hook", async () => {
    const events: ToolInvocationEvent[] = [];
    const runner = createToolRunner({
      pathPrefix: [bin],
      onInvocation: (e) => {
        events.push(e);
        throw new Error("hook bug");
      },
    });
    await runner.run("print-args", ["1"]);
    await runner.run("fail-loud", []).catch(() => undefined);
    expect(events).toHaveLength(2);
    expect(events[0]).toMatchObject({
      tool: "print-args",
      argv: ["1"],
      exitCode: 0,
      ok: true,
      timedOut: false,
    });
    expect(events[0]!.durationMs).toBeGreaterThanOrEqual(0);
    expect(events[1]).toMatchObject({ tool: "fail-loud", exitCode: 4, ok: false });
  });

  it("hands secretArgs to the tool verbatim but never shows them in events, errors or stderr", async () => {
    const secret = "s3cret-Pass!word";
    const events: ToolInvocationEvent[] = [];
    const runner = createToolRunner({ pathPrefix: [bin], onInvocation: (e) => events.push(e) });
    const ok = await runner.run("print-args", ["--password", secret, `--pw=${secret}`], {
      secretArgs: [secret],
    });
    expect(ok.stdout.split("\0").slice(0, -1)).toEqual(["--password", secret, `--pw=${secret}`]);
    expect(events[0]!.argv).toEqual(["--password", "<redacted>", "--pw=<redacted>"]);

    await tool("echo-fail", `echo "bad password: $2" >&2; exit 1`);
    const err = (await runner
      .run("echo-fail", ["--password", secret], { secretArgs: [secret] })
      .catch((e: unknown) => e)) as ToolError;
    expect(err).toBeInstanceOf(ToolError);
    expect(err.argv).toEqual(["--password", "<redacted>"]);
    expect(err.stderr).toContain("bad password: <redacted>");
    const everything = JSON.stringify({ events, err, message: err.message, details: err.details });
    expect(everything).not.toContain(secret);

    const missing = (await runner
      .run("no-such-tool-here", ["--password", secret], { secretArgs: [secret] })
      .catch((e: unknown) => e)) as ToolError;
    expect(missing.code).toBe("failed_precondition");
    expect(JSON.stringify({ m: missing.message, d: missing.details, c: missing.cause })).not.toContain(
      secret,
    );
  });
});

describe("parseJsonOutput", () => {
  const schema = z.object({ size: z.number() });

  it("returns typed data", () => {
    expect(parseJsonOutput("qemu-img", ["info"], '{"size": 3}', schema)).toEqual({ size: 3 });
  });

  it("names the tool and the problem for broken JSON", () => {
    const err = (() => {
      try {
        parseJsonOutput("qemu-img", ["info", "--output=json", "/p"], '{"size": ', schema);
      } catch (e) {
        return e;
      }
    })() as ToolOutputError;
    expect(err).toBeInstanceOf(ToolOutputError);
    expect(err).toBeInstanceOf(ToolError);
    expect(err.message).toMatch(/^qemu-img info printed output that is not the expected JSON: /);
    expect(err.message).toContain("argv: info --output=json /p");
  });

  it("names the field for a schema mismatch", () => {
    expect(() => parseJsonOutput("lvs", ["--reportformat", "json"], '{"size": "3"}', schema)).toThrow(
      /^lvs printed output that is not the expected JSON: size: /,
    );
  });
});
