import { invalidArgument } from "@stowage/core";
import { decodePageToken, encodePageToken, pageSize } from "@stowage/store";

/** Where a page starts and how long it is, from a List request. */
export interface PageRequest {
  pageSize: number;
  pageToken: string;
}

/**
 * One page of a List call: reads rows after the request's page token, and answers them with the token of the
 * next page ("" after the last one).
 */
export async function paged<T, W>(
  req: PageRequest,
  read: (page: { after: string; limit: number }) => Promise<T[]>,
  idOf: (row: T) => string,
  toWire: (row: T) => W,
): Promise<{ rows: W[]; nextPageToken: string }> {
  const limit = pageSize(req.pageSize);
  const rows = await read({ after: after(req.pageToken), limit });
  const last = rows.length === limit ? rows[rows.length - 1] : undefined;
  return { rows: rows.map(toWire), nextPageToken: last ? encodePageToken(idOf(last)) : "" };
}

function after(token: string): string {
  try {
    return decodePageToken(token);
  } catch {
    throw invalidArgument("page_token is not valid: pass the next_page_token of the previous response");
  }
}
