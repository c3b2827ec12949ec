import { startAgent } from "./agent.js";
import { agentHelp, loadAgentConfig } from "./config.js";
import { installLightHeaders } from "./headers.js";

// Before the agent's first gRPC call touches Node's Headers, which would load undici: see headers.ts.
installLightHeaders();

const args = process.argv.slice(2);
if (args.includes("--help") || args.includes("-h")) {
  process.stdout.write(agentHelp());
  process.exit(0);
}
const i = args.indexOf("--config");
const path = i >= 0 ? args[i + 1] : process.env.STOWAGE_AGENT_CONFIG;
if (!path) {
  process.stderr.write(
    "stowage-agent: no config: pass --config FILE or set STOWAGE_AGENT_CONFIG (see --help)\n",
  );
  process.exit(2);
}

try {
  const config = loadAgentConfig(path);
  const agent = await startAgent(config);
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`stowage-agent: ${signal}, stopping\n`);
    // stop() is bounded (the grace for running operations, then a bounded drain); this is the last resort.
    const force = setTimeout(() => process.exit(1), config.shutdownGraceMs + 5000);
    force.unref();
    await agent.stop();
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  // NATS closed the connection for good (a revoked host, expired credentials): a new process starts over.
  void agent.lost.then(async (why) => {
    process.stderr.write(`stowage-agent: ${why}\n`);
    const force = setTimeout(() => process.exit(1), config.shutdownGraceMs + 5000);
    force.unref();
    await agent.stop().catch(() => {});
    process.exit(1);
  });
} catch (err) {
  process.stderr.write(`stowage-agent: ${(err as Error).message}\n`);
  process.exit(1);
}
