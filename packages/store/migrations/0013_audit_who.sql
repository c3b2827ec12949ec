-- Who made each audited call: the caller's role (viewer, operator, admin, agent; '' when it was not
-- authenticated) and its address. Adding a column with a constant default rewrites nothing.
alter table audit_log add column role text not null default '';
alter table audit_log add column source text not null default '';
alter table audit_log add constraint audit_log_outcome check (outcome in ('ok', 'error', 'denied')) not valid;

-- `stowctl audit list` reads newest first (by id, its paging key) with optional exact filters: each filter has an
-- index that hands out its rows in that order, and the time window one of its own.
create index audit_log_at on audit_log (at desc, id desc);
create index audit_log_actor on audit_log (actor, id desc);
create index audit_log_target on audit_log (target, id desc);
create index audit_log_action on audit_log (action, id desc);
