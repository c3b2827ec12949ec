import { invalidArgument } from "@stowage/core";
import { decodePageToken, encodePageToken } from "@stowage/store";

/** The next page token of a page that came back full, or "" after the last page. */
export function nextPageToken<T>(rows: T[], limit: number, idOf: (row: T) => string): string {
  return rows.length === limit ? encodePageToken(idOf(rows[rows.length - 1]!)) : "";
}

/** The id a page starts after, from the page token the caller was given. */
export function after(token: string): string {
  try {
    return decodePageToken(token);
  } catch {
    throw invalidArgument("page_token is not valid: pass the next_page_token of the previous response");
  }
}
