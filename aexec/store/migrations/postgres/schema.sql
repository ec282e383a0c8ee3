-- The schema every migration in this folder adds up to, for reading; a test applies the
-- migrations in order to an empty database and checks that the result is this schema.
-- Keep it in step with each new migration.  (aexec_migrations is created by the store
-- itself before the first migration.)

CREATE TABLE aexec_migrations (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- A plan is stored once per digest and shared by every run of it.
CREATE TABLE aexec_plans (
    digest   text PRIMARY KEY,
    pipeline text NOT NULL,
    data     bytea NOT NULL
);

CREATE TABLE aexec_runs (
    run_id      text COLLATE "C" PRIMARY KEY,
    serial      bigserial NOT NULL UNIQUE,   -- insertion order: breaks created_at ties
    pipeline    text NOT NULL,
    plan_digest text NOT NULL REFERENCES aexec_plans (digest),
    status      text NOT NULL,
    priority    integer NOT NULL DEFAULT 0,
    params      text NOT NULL DEFAULT '{}',  -- JSON object
    created_at  double precision NOT NULL,
    started_at  double precision,
    finished_at double precision,
    result      bytea,                       -- the encoded pipeline result
    error       text,
    owner       text,                        -- the coordinator holding the lease
    lease_until double precision,            -- when that lease ends
    epoch       integer NOT NULL DEFAULT 1,  -- times claimed, creation included (fencing)
    tags        jsonb NOT NULL DEFAULT '{}', -- labels: a JSON object of text to text
    parent      text,                        -- the run this one reruns, or is a child of
    parent_step text                         -- a child run's: the step of parent running it
);

CREATE INDEX aexec_runs_by_created_at ON aexec_runs (created_at, serial);
CREATE INDEX aexec_runs_by_status ON aexec_runs (status, created_at, serial);
-- Claiming and renewing leases look only at unfinished runs.
CREATE INDEX aexec_runs_unfinished_by_owner ON aexec_runs (owner)
    WHERE status IN ('pending', 'running');
-- Retention finds finished runs by when they finished, and checks that a plan is unused.
CREATE INDEX aexec_runs_finished ON aexec_runs (finished_at, run_id)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX aexec_runs_by_plan ON aexec_runs (plan_digest);
-- The UI's runs list filters by pipeline, most recent first.
CREATE INDEX aexec_runs_by_pipeline ON aexec_runs (pipeline, created_at, serial);
CREATE INDEX aexec_runs_by_tags ON aexec_runs USING gin (tags jsonb_path_ops);

CREATE TABLE aexec_steps (
    run_id      text COLLATE "C" NOT NULL REFERENCES aexec_runs (run_id),
    position    integer NOT NULL,            -- index in the plan
    key         text NOT NULL,
    name        text NOT NULL,
    queue       text NOT NULL,
    status      text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    started_at  double precision,
    finished_at double precision,
    worker      text,
    error       text,                        -- JSON of ErrorInfo.to_dict()
    output      bytea,                       -- the encoded step output
    failures    integer NOT NULL DEFAULT 0,  -- attempts that really failed (not lost ones)
    confirmed   integer NOT NULL DEFAULT 0,  -- the attempt whose dispatch the broker confirmed
    PRIMARY KEY (run_id, key)
);

-- Step outputs and run results live in their rows, never here.  seq increases within a
-- run in commit order: an append locks the runs it writes to.
CREATE TABLE aexec_events (
    seq     bigserial PRIMARY KEY,
    run_id  text COLLATE "C" NOT NULL REFERENCES aexec_runs (run_id),
    ts      double precision NOT NULL,
    kind    text NOT NULL,
    step    text,
    attempt integer NOT NULL DEFAULT 0,
    data    text                             -- JSON object; NULL when empty
);

CREATE INDEX aexec_events_by_run ON aexec_events (run_id, seq);

-- A request to cancel a run, kept until the run is deleted, whether the run exists yet or
-- not (its submission may still be queued); the first request's reason is kept.
CREATE TABLE aexec_cancel_requests (
    run_id       text PRIMARY KEY,
    reason       text,
    requested_at double precision NOT NULL
);

-- The webhook outbox (aexec.store: Webhook outbox): one row per notification of a run's
-- ending, written with the run's ending event; deliverers lease due rows.
CREATE TABLE aexec_webhooks (
    id          text PRIMARY KEY,            -- derived from (run, webhook, event)
    run_id      text COLLATE "C" NOT NULL REFERENCES aexec_runs (run_id),
    url         text NOT NULL,
    event       text NOT NULL,
    body        bytea NOT NULL,              -- the JSON sent, fixed when the run ended
    created_at  double precision NOT NULL,
    next_at     double precision NOT NULL,   -- when it is (next) due
    status      text NOT NULL DEFAULT 'pending',
    attempts    integer NOT NULL DEFAULT 0,
    finished_at double precision,            -- delivered or given up
    last_status integer,                     -- HTTP status of the last attempt
    last_error  text,
    owner       text,                        -- the deliverer holding its lease
    lease_until double precision
);

CREATE INDEX aexec_webhooks_by_run ON aexec_webhooks (run_id, created_at);
CREATE INDEX aexec_webhooks_due ON aexec_webhooks (next_at) WHERE status = 'pending';

-- Token buckets of rate limits, shared by the coordinators of this database (its clock).
CREATE TABLE aexec_rate_buckets (
    name       text COLLATE "C" PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at double precision NOT NULL
);

-- Slots of concurrency caps, shared by the coordinators of this database: one row per cap
-- (gate) held by an attempt of a step, from before its dispatch until its attempt ends.
CREATE TABLE aexec_limit_slots (
    gate     text COLLATE "C" NOT NULL,
    run_id   text COLLATE "C" NOT NULL,
    step     text COLLATE "C" NOT NULL,
    attempt  integer NOT NULL,
    taken_at double precision NOT NULL,
    PRIMARY KEY (gate, run_id, step, attempt)
);

CREATE INDEX aexec_limit_slots_by_run ON aexec_limit_slots (run_id, step);

-- Steps refused a slot of a cap, waiting for one: served before steps that asked later
-- (across coordinators); a row not asked again for a while is forgotten (its coordinator
-- stopped, or the step no longer waits).
CREATE TABLE aexec_limit_waits (
    gate    text COLLATE "C" NOT NULL,
    run_id  text COLLATE "C" NOT NULL,
    step    text COLLATE "C" NOT NULL,
    since   double precision NOT NULL,
    seen_at double precision NOT NULL,
    PRIMARY KEY (gate, run_id, step)
);
