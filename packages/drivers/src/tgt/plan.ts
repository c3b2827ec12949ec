import { StowageError } from "@stowage/core";
import { type IscsiExport, iqnForVolume, isStowageIqn } from "./export.js";
import type { TgtTarget } from "./show.js";

/**
 * The planner: from what tgtd has (`tgtadm --op show`) and what is desired, the tgtadm steps that converge
 * one to the other. Pure, so every rule below is unit-tested without a daemon:
 *
 * - Only targets named under STOWAGE_IQN_PREFIX are ever changed or deleted; any other target, and any account
 *   bound to one, is left alone (a desired CHAP user that a foreign target uses is refused).
 * - A target keeps its tid; a new one gets the lowest tid no target uses (after this plan's deletions).
 * - LUN 1 is the volume: a LUN 1 on another backing store is replaced, other LUNs (but tgt's own LUN 0) go.
 * - ACL entries and accounts are diffed: removals first, then additions.
 * - tgtd cannot say which secret an account has, so the caller tells (`accountIsCurrent`). An account whose
 *   secret is not known to be the desired one is re-created (tgtadm has no update); while that happens on a
 *   target the account guards, the target's ACL is emptied first and restored after, so there is no moment in
 *   which the target is open without CHAP (an empty address ACL lets nobody in).
 * - Accounts no desired export uses are deleted when they were bound only to Stowage targets or were made by
 *   this exporter (`ownedAccounts`).
 */

export type TgtStep =
  | { op: "delete-target"; tid: number; iqn: string }
  | { op: "new-target"; tid: number; iqn: string }
  | { op: "new-lun"; tid: number; lun: number; bstype: "rdwr" | "rbd"; path: string }
  | { op: "delete-lun"; tid: number; lun: number }
  | { op: "bind-address" | "unbind-address"; tid: number; address: string }
  | { op: "bind-name" | "unbind-name"; tid: number; name: string }
  | { op: "new-account"; user: string; secret: string }
  | { op: "delete-account"; user: string }
  | { op: "bind-account" | "unbind-account"; tid: number; user: string };

export interface TgtState {
  targets: TgtTarget[];
  /** `--mode account --op show`: every account tgtd has. */
  accounts: string[];
}

export interface PlanOptions {
  /** Whether account `user` is known to have `secret` now (tgtd never shows secrets). */
  accountIsCurrent?: (user: string, secret: string) => boolean;
  /** Accounts this exporter made, so it may delete them once unused even when they are bound to nothing. */
  ownedAccounts?: ReadonlySet<string>;
}

export interface PlannedExport {
  volumeId: string;
  iqn: string;
  tid: number;
}

export interface TgtPlan {
  steps: TgtStep[];
  exports: PlannedExport[];
  /** Stowage targets this plan deletes. */
  removed: { iqn: string; tid: number }[];
}

export function bstypeFor(e: IscsiExport): "rdwr" | "rbd" {
  // tgtd's default backing store (rdwr: pread/pwrite) serves files and block devices alike.
  return e.backing.type === "rbd" ? "rbd" : "rdwr";
}

/** Lowest positive integer not in `used`. */
function lowestFree(used: Set<number>): number {
  let tid = 1;
  while (used.has(tid)) tid++;
  return tid;
}

export function planTgt(
  current: TgtState,
  desiredIn: readonly IscsiExport[],
  opts: PlanOptions = {},
): TgtPlan {
  const accountIsCurrent = opts.accountIsCurrent ?? (() => false);
  const owned = opts.ownedAccounts ?? new Set<string>();
  const desired = [...desiredIn].sort((a, b) =>
    a.volumeId < b.volumeId ? -1 : a.volumeId > b.volumeId ? 1 : 0,
  );
  const wanted = new Map(desired.map((e) => [iqnForVolume(e.volumeId), e]));

  const ours = current.targets.filter((t) => isStowageIqn(t.iqn));
  const foreign = current.targets.filter((t) => !isStowageIqn(t.iqn));
  const foreignAccounts = new Set(foreign.flatMap((t) => t.accounts));
  const accountExists = new Set(current.accounts);
  const desiredUsers = new Set(desired.flatMap((e) => (e.chap ? [e.chap.username] : [])));

  for (const e of desired) {
    if (e.chap && foreignAccounts.has(e.chap.username)) {
      throw new StowageError(
        "failed_precondition",
        `CHAP user ${e.chap.username} of ${e.volumeId} is bound to a target Stowage does not manage; choose another user name`,
        { volumeId: e.volumeId, user: e.chap.username },
      );
    }
  }

  const steps: TgtStep[] = [];
  const removed: { iqn: string; tid: number }[] = [];
  const used = new Set(current.targets.map((t) => t.tid));

  // 1. Stowage targets nobody wants any more (their sessions are dropped: --force).
  for (const t of ours) {
    if (wanted.has(t.iqn)) continue;
    steps.push({ op: "delete-target", tid: t.tid, iqn: t.iqn });
    removed.push({ iqn: t.iqn, tid: t.tid });
    used.delete(t.tid);
  }
  const kept = new Map(ours.filter((t) => wanted.has(t.iqn)).map((t) => [t.iqn, t]));

  // 2. Accounts: new ones, and those whose secret must be set again. A re-created account that guards a kept
  // target is handled with that target (step 3), inside its ACL dance.
  const rotateOnTarget = new Set<string>();
  for (const e of desired) {
    if (!e.chap) continue;
    const { username: user, secret } = e.chap;
    if (!accountExists.has(user)) {
      steps.push({ op: "new-account", user, secret });
      continue;
    }
    if (accountIsCurrent(user, secret)) continue;
    const t = kept.get(iqnForVolume(e.volumeId));
    if (t?.accounts.includes(user)) {
      rotateOnTarget.add(user);
    } else {
      steps.push({ op: "delete-account", user }, { op: "new-account", user, secret });
    }
  }
  // Deleting an account unbinds it everywhere: later per-target diffs must see it as unbound.
  const recreated = new Set(
    steps.flatMap((s) => (s.op === "delete-account" ? [s.user] : [])).concat([...rotateOnTarget]),
  );

  // Accounts that go: unused by any desired export, not bound to a foreign target, and ours.
  const doomed = new Set<string>();
  for (const user of current.accounts) {
    if (desiredUsers.has(user) || foreignAccounts.has(user)) continue;
    if (ours.some((t) => t.accounts.includes(user)) || owned.has(user)) doomed.add(user);
  }

  // 3. Each desired export: create its target, or diff the one there is.
  const exports: PlannedExport[] = [];
  for (const e of desired) {
    const iqn = iqnForVolume(e.volumeId);
    const bstype = bstypeFor(e);
    const addresses = [...new Set(e.allowed.map((a) => a.address))];
    const names = [...new Set(e.allowed.map((a) => a.initiatorIqn))];
    const user = e.chap?.username;
    const bindAcl = (tid: number): TgtStep[] => [
      ...addresses.map((address): TgtStep => ({ op: "bind-address", tid, address })),
      ...names.map((name): TgtStep => ({ op: "bind-name", tid, name })),
    ];

    const t = kept.get(iqn);
    if (!t) {
      const tid = lowestFree(used);
      used.add(tid);
      exports.push({ volumeId: e.volumeId, iqn, tid });
      // The account is bound before the ACL, so no initiator can log in before CHAP is required.
      steps.push(
        { op: "new-target", tid, iqn },
        { op: "new-lun", tid, lun: 1, bstype, path: e.backing.path },
        ...(user ? [{ op: "bind-account" as const, tid, user }] : []),
        ...bindAcl(tid),
      );
      continue;
    }
    const tid = t.tid;
    exports.push({ volumeId: e.volumeId, iqn, tid });

    const lun1 = t.luns.find((l) => l.lun === 1);
    for (const l of t.luns) {
      if (l.lun !== 0 && l.lun !== 1) steps.push({ op: "delete-lun", tid, lun: l.lun });
    }
    if (lun1 && (lun1.backingStorePath !== e.backing.path || lun1.backingStoreType !== bstype)) {
      steps.push({ op: "delete-lun", tid, lun: 1 });
    }
    if (!lun1 || lun1.backingStorePath !== e.backing.path || lun1.backingStoreType !== bstype) {
      steps.push({ op: "new-lun", tid, lun: 1, bstype, path: e.backing.path });
    }

    for (const a of t.accounts) {
      if (a !== user && !doomed.has(a)) steps.push({ op: "unbind-account", tid, user: a });
    }

    if (user && e.chap && rotateOnTarget.has(user)) {
      // Close the target (no ACL entry: nobody gets in), set the secret again, bind, reopen with the desired ACL.
      steps.push(
        ...t.aclAddresses.map((address): TgtStep => ({ op: "unbind-address", tid, address })),
        ...t.aclNames.map((name): TgtStep => ({ op: "unbind-name", tid, name })),
        { op: "delete-account", user },
        { op: "new-account", user, secret: e.chap.secret },
        { op: "bind-account", tid, user },
        ...bindAcl(tid),
      );
      continue;
    }
    const boundNow = t.accounts.includes(user ?? "") && !recreated.has(user ?? "");
    if (user && !boundNow) steps.push({ op: "bind-account", tid, user });
    for (const address of t.aclAddresses) {
      if (!addresses.includes(address)) steps.push({ op: "unbind-address", tid, address });
    }
    for (const name of t.aclNames) {
      if (!names.includes(name)) steps.push({ op: "unbind-name", tid, name });
    }
    for (const address of addresses) {
      if (!t.aclAddresses.includes(address)) steps.push({ op: "bind-address", tid, address });
    }
    for (const name of names) {
      if (!t.aclNames.includes(name)) steps.push({ op: "bind-name", tid, name });
    }
  }

  // 4. Accounts nobody uses (deleting one also unbinds it from any target).
  for (const user of doomed) steps.push({ op: "delete-account", user });

  return { steps, exports, removed };
}

/** A step as a log or a report may show it: never the secret. */
export function describeStep(s: TgtStep): string {
  switch (s.op) {
    case "delete-target":
    case "new-target":
      return `${s.op} tid ${s.tid} ${s.iqn}`;
    case "new-lun":
      return `new-lun tid ${s.tid} lun ${s.lun} ${s.bstype} ${s.path}`;
    case "delete-lun":
      return `delete-lun tid ${s.tid} lun ${s.lun}`;
    case "bind-address":
    case "unbind-address":
      return `${s.op} tid ${s.tid} ${s.address}`;
    case "bind-name":
    case "unbind-name":
      return `${s.op} tid ${s.tid} ${s.name}`;
    case "new-account":
    case "delete-account":
      return `${s.op} ${s.user}`;
    case "bind-account":
    case "unbind-account":
      return `${s.op} tid ${s.tid} ${s.user}`;
  }
}

/** The tgtadm argv of a step (after `tgtadm`), and the secrets in it the runner must redact. */
export function tgtadmArgv(
  controlPort: number,
  s: TgtStep,
  rbdBsopts?: string,
): { argv: string[]; secretArgs: string[] } {
  const base = ["-C", String(controlPort), "--lld", "iscsi"];
  const target = (op: string, tid: number, ...rest: string[]) => [
    ...base,
    "--mode",
    "target",
    "--op",
    op,
    "--tid",
    String(tid),
    ...rest,
  ];
  const plain = (argv: string[]) => ({ argv, secretArgs: [] });
  switch (s.op) {
    case "delete-target":
      return plain([...base, "--mode", "target", "--op", "delete", "--force", "--tid", String(s.tid)]);
    case "new-target":
      return plain(target("new", s.tid, "--targetname", s.iqn));
    case "new-lun":
      return plain([
        ...base,
        "--mode",
        "logicalunit",
        "--op",
        "new",
        "--tid",
        String(s.tid),
        "--lun",
        String(s.lun),
        "--backing-store",
        s.path,
        ...(s.bstype === "rbd" ? ["--bstype", "rbd", ...(rbdBsopts ? ["--bsopts", rbdBsopts] : [])] : []),
      ]);
    case "delete-lun":
      return plain([
        ...base,
        "--mode",
        "logicalunit",
        "--op",
        "delete",
        "--tid",
        String(s.tid),
        "--lun",
        String(s.lun),
      ]);
    case "bind-address":
      return plain(target("bind", s.tid, "--initiator-address", s.address));
    case "unbind-address":
      return plain(target("unbind", s.tid, "--initiator-address", s.address));
    case "bind-name":
      return plain(target("bind", s.tid, "--initiator-name", s.name));
    case "unbind-name":
      return plain(target("unbind", s.tid, "--initiator-name", s.name));
    case "new-account":
      // tgtadm takes the password only on its argv: it is in the process list (/proc/PID/cmdline) for the few
      // milliseconds tgtadm runs, readable by any local user. The runner redacts it from everything it logs;
      // docs/security.md says what that leaves.
      return {
        argv: [...base, "--mode", "account", "--op", "new", "--user", s.user, "--password", s.secret],
        secretArgs: [s.secret],
      };
    case "delete-account":
      return plain([...base, "--mode", "account", "--op", "delete", "--user", s.user]);
    case "bind-account":
    case "unbind-account":
      return plain([
        ...base,
        "--mode",
        "account",
        "--op",
        s.op === "bind-account" ? "bind" : "unbind",
        "--tid",
        String(s.tid),
        "--user",
        s.user,
      ]);
  }
}
