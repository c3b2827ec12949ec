import { Code, ConnectError } from "@connectrpc/connect";

/** A handler for a method that is in the contract but not built yet: UNIMPLEMENTED, saying so. */
export const notYet = (what: string) => () => {
  throw new ConnectError(
    `${what} is part of the contract but not implemented by this controller yet`,
    Code.Unimplemented,
  );
};
