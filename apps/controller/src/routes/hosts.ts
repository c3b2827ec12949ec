import type { ServiceImpl } from "@connectrpc/connect";
import { type HostService, HostState } from "@stowage/proto";
import { pageSize } from "@stowage/store";
import { actorOf } from "../auth.js";
import type { ControllerContext } from "../context.js";
import { hostToWire } from "../convert.js";
import { describeHost, listHostsPage, setHostSchedulable } from "../host-service.js";
import { after, nextPageToken } from "./paging.js";

const STATES: Partial<Record<HostState, "up" | "down">> = { [HostState.UP]: "up", [HostState.DOWN]: "down" };

export function hostRoutes(ctx: ControllerContext): ServiceImpl<typeof HostService> {
  return {
    async listHosts(req) {
      const limit = pageSize(req.pageSize);
      const state = STATES[req.state];
      const rows = await listHostsPage(ctx, {
        ...(state ? { state } : {}),
        zone: req.zone,
        after: after(req.pageToken),
        limit,
      });
      return {
        hosts: rows.map((h) => hostToWire(h.host, h.counts)),
        nextPageToken: nextPageToken(rows, limit, (h) => h.host.id),
      };
    },
    async getHost(req) {
      const h = await describeHost(ctx, req.hostId);
      return { host: hostToWire(h.host, h.counts) };
    },
    async setHostSchedulable(req, hc) {
      return { host: hostToWire(await setHostSchedulable(ctx, req, actorOf(hc))) };
    },
  };
}
