import { createServer } from "node:net";
import { describe, expect, it } from "vitest";
import { canConnect, freePort, freePorts, isPortFree, waitForPortFree } from "./ports.js";

describe("ports", () => {
  it("finds free ports that can be bound", async () => {
    const port = await freePort();
    expect(port).toBeGreaterThan(0);
    expect(await isPortFree(port)).toBe(true);
    const many = await freePorts(3);
    expect(new Set(many).size).toBe(3);
  });

  it("sees a port in use, then free again", async () => {
    const server = createServer();
    const port = await freePort();
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
    expect(await isPortFree(port)).toBe(false);
    expect(await canConnect(port)).toBe(true);
    server.close();
    await waitForPortFree(port);
    expect(await canConnect(port)).toBe(false);
  });
});
