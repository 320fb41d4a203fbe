-- Schema version 1: delegations, agent handoffs, workflow runs, their journals, step
-- results and summaries, and the token pool's state (its tokens are leases: each names
-- its host and renewed_at). Applied by `orchestrate store migrate`, in one transaction.

CREATE TABLE schema_version (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per delegation (top-level: sub = false; sub-delegation: sub = true).
-- `envelope` is the pending envelope (NULL once final), `record` the final record
-- (the handoff's fields + "envelope"); host, pid and renewed_at are the waiter's.
CREATE TABLE delegations (
    run_id         text NOT NULL,
    sub            boolean NOT NULL,
    envelope       jsonb,
    record         jsonb,
    outcome        text,
    parent_run_id  text,
    host           text,
    pid            integer,
    renewed_at     text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, sub)
);
CREATE INDEX delegations_pending ON delegations (sub) WHERE envelope IS NOT NULL;
CREATE INDEX delegations_parent ON delegations (parent_run_id);

-- What agents delivered, byte for byte, never rewritten: `state` says what became of
-- it (inbox: not delivered yet; recorded; rejected: refused and kept; kept: a second
-- handoff listed in the record's also_received).
CREATE TABLE handoffs (
    id           bigserial PRIMARY KEY,
    run_id       text NOT NULL,
    sub          boolean NOT NULL,
    n            integer NOT NULL,
    body         bytea NOT NULL,
    state        text NOT NULL DEFAULT 'inbox',
    received_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, sub, n)
);
CREATE INDEX handoffs_inbox ON handoffs (sub, run_id) WHERE state = 'inbox';

-- Workflow runs: metadata, summary, cancel request, and the executor's lease
-- (owner_host, owner_pid, lease_until: renewed by the executor while it runs).
CREATE TABLE runs (
    run_id               text PRIMARY KEY,
    meta                 jsonb NOT NULL,
    summary              jsonb,
    cancel_requested_at  timestamptz,
    owner_host           text,
    owner_pid            integer,
    owner_token          text,
    lease_until          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- The journal of each run, in order (id grows with every append).
CREATE TABLE run_events (
    id      bigserial PRIMARY KEY,
    run_id  text NOT NULL,
    body    text NOT NULL
);
CREATE INDEX run_events_run ON run_events (run_id, id);

CREATE TABLE step_results (
    run_id   text NOT NULL,
    step_id  text NOT NULL,
    data     jsonb NOT NULL,
    PRIMARY KEY (run_id, step_id)
);

-- The token pool's state document (engine.pool.state), one row per pool.
CREATE TABLE pool_state (
    name        text PRIMARY KEY,
    state       bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
