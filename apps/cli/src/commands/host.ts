import { HostSchema, HostState, HostStateSchema } from "@stowage/proto";
import type { Command } from "commander";
import { type Act, collectPages, examples, PAGE_SIZE } from "../command-kit.js";
import { toPlain } from "../output.js";
import { parseEnum, parseName } from "../parse.js";
import { hostDetails, hostTable } from "../views.js";

const hints = { notFoundHint: "list them with `stowctl host list`" };

export function registerHostCommands(program: Command, act: Act): void {
  const host = program
    .command("host")
    .description("Hypervisor hosts: the machines running stowage-agent, their NUMA nodes and heartbeats")
    .addHelpText(
      "after",
      examples(
        "stowctl host list",
        "stowctl host get node1",
        "stowctl host revoke node1 --reason 'disk stolen'",
      ),
    );

  host
    .command("list")
    .description("List the registered hosts with their state, capacity and last heartbeat")
    .option("--state <state>", "only hosts in this state: up or down")
    .option("--zone <zone>", "only hosts in this zone")
    .addHelpText(
      "after",
      examples(
        "stowctl host list",
        "stowctl host list --state down",
        "stowctl host list -o json | jq -r '.[].id'",
      ),
    )
    .action(
      act(hints, async (ctx, _args, opts) => {
        const state = opts.state
          ? parseEnum<HostState>(HostStateSchema, opts.state, "--state")
          : HostState.UNSPECIFIED;
        const zone = (opts.zone as string | undefined) ?? "";
        const hosts = await collectPages(async (pageToken) => {
          const res = await ctx.clients.hosts.listHosts(
            { state, zone, pageSize: PAGE_SIZE, pageToken },
            ctx.call(),
          );
          return { items: res.hosts, next: res.nextPageToken };
        });
        if (ctx.json) ctx.printJson(hosts.map((h) => toPlain(HostSchema, h)));
        else if (hosts.length === 0) {
          ctx.note("No hosts found: start stowage-agent on a host, or a local cluster with `npm run up`\n");
        } else ctx.print(hostTable(hosts, ctx.view()));
      }),
    );

  host
    .command("get")
    .description("Show one host: state, schedulability, NUMA nodes (CPU lists, memory), agent version")
    .argument("<host>", "the host's name")
    .addHelpText("after", examples("stowctl host get node1", "stowctl host get node1 -o json"))
    .action(
      act(hints, async (ctx, [name]) => {
        const hostId = parseName("host", name!);
        const res = await ctx.clients.hosts.getHost({ hostId }, ctx.call());
        const h = res.host;
        if (!h) throw new Error(`the controller returned no host for ${hostId}`);
        if (ctx.json) ctx.printJson(toPlain(HostSchema, h));
        else ctx.print(hostDetails(h, ctx.view()));
      }),
    );

  host
    .command("revoke")
    .description(
      "Revoke a host (admin): every certificate and NATS credential it holds, and its unused join tokens; it must join again",
    )
    .argument("<host>", "the host's name")
    .option("--reason <text>", "why, for the audit log")
    .addHelpText(
      "after",
      `${examples("stowctl host revoke node1 --reason 'decommissioned'", "stowctl host revoke node1 -o json")}
The controller refuses the host's calls within 10 s and the NATS server closes its connection. Revoking a host
that is revoked already changes nothing (0 certificates). To let it back, make a new join token:
\`stowctl token create --host NAME\`.
`,
    )
    .action(
      act(hints, async (ctx, [name], opts) => {
        const hostId = parseName("host", name!);
        const reason = (opts.reason as string | undefined) ?? "";
        const res = await ctx.clients.hosts.revokeHost({ hostId, reason }, ctx.call());
        if (ctx.json)
          ctx.printJson({
            hostId,
            certificatesRevoked: res.certificatesRevoked,
            natsUsersRevoked: res.natsUsersRevoked,
          });
        else
          ctx.note(
            res.certificatesRevoked === 0 && res.natsUsersRevoked === 0
              ? `Host ${hostId} holds no live certificate: nothing more to revoke.\n`
              : `Host ${hostId} revoked: ${res.certificatesRevoked} certificate(s) and ${res.natsUsersRevoked} NATS credential(s); its calls are refused within 10 s. It must join again with a new join token (\`stowctl token create --host ${hostId}\`).\n`,
          );
      }),
    );
}
