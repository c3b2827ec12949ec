import type { ServiceImpl } from "@connectrpc/connect";
import { type HostService, HostState } from "@stowage/proto";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { hostToWire } from "../convert.js";
import { describeHost, listHostsPage, setHostSchedulable } from "../host-service.js";
import { revokeHost } from "../join.js";
import { paged } from "./paging.js";

const STATES: Partial<Record<HostState, "up" | "down">> = { [HostState.UP]: "up", [HostState.DOWN]: "down" };

export function hostRoutes(ctx: ControllerContext): ServiceImpl<typeof HostService> {
  return {
    async listHosts(req) {
      const state = STATES[req.state];
      const filter = { ...(state ? { state } : {}), zone: req.zone };
      const p = await paged(
        req,
        (page) => listHostsPage(ctx, { ...filter, ...page }),
        (h) => h.host.id,
        (h) => hostToWire(h.host, h.counts),
      );
      return { hosts: p.rows, nextPageToken: p.nextPageToken };
    },
    async getHost(req) {
      const h = await describeHost(ctx, req.hostId);
      return { host: hostToWire(h.host, h.counts) };
    },
    revokeHost: (req, hc) => revokeHost(ctx, req, actorOf(hc)),
    async setHostSchedulable(req, hc) {
      return { host: hostToWire(await setHostSchedulable(ctx, req, actorOf(hc))) };
    },
  };
}
