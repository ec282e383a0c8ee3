-- The schema every migration in this folder adds up to, for reading; a test applies the
-- migrations in order to an empty database and checks that the result is this schema.
-- Keep it in step with each new migration.

-- A plan is stored once per digest and shared by every run of it.
CREATE TABLE plans (
    digest   TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    data     BLOB NOT NULL
);

CREATE TABLE runs (
    run_id      TEXT PRIMARY KEY,
    pipeline    TEXT NOT NULL,
    plan_digest TEXT NOT NULL REFERENCES plans (digest),
    status      TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    params      TEXT NOT NULL DEFAULT '{}',  -- JSON object
    created_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    result      BLOB,                        -- the encoded pipeline result
    error       TEXT,
    owner       TEXT,                        -- the coordinator holding the lease
    lease_until REAL,                        -- when that lease ends (seconds since the epoch)
    epoch       INTEGER NOT NULL DEFAULT 1,  -- times claimed, creation included (fencing)
    tags        TEXT NOT NULL DEFAULT '{}',  -- JSON object of text to text
    parent      TEXT,                        -- the run this one reruns, or is a child of
    parent_step TEXT                         -- a child run's: the step of parent running it
);

CREATE INDEX runs_by_created_at ON runs (created_at);
-- Claiming and renewing leases look only at unfinished runs (the same WHERE as the queries).
CREATE INDEX runs_unfinished ON runs (created_at)
    WHERE status = 'pending' OR status = 'running';
CREATE INDEX runs_unfinished_by_owner ON runs (owner)
    WHERE status = 'pending' OR status = 'running';
-- Retention finds finished runs by when they finished, and checks that a plan is unused.
CREATE INDEX runs_finished ON runs (finished_at, run_id)
    WHERE status = 'succeeded' OR status = 'failed' OR status = 'cancelled';
CREATE INDEX runs_by_plan ON runs (plan_digest);
-- The UI's runs list filters by pipeline, most recent first.
CREATE INDEX runs_by_pipeline ON runs (pipeline, created_at);

CREATE TABLE steps (
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    position    INTEGER NOT NULL,            -- index in the plan
    key         TEXT NOT NULL,
    name        TEXT NOT NULL,
    queue       TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  REAL,
    finished_at REAL,
    worker      TEXT,
    error       TEXT,                        -- JSON of ErrorInfo.to_dict()
    output      BLOB,                        -- the encoded step output
    failures    INTEGER NOT NULL DEFAULT 0,  -- attempts that really failed (not lost ones)
    confirmed   INTEGER NOT NULL DEFAULT 0,  -- the attempt whose dispatch the broker confirmed
    PRIMARY KEY (run_id, key)
);

-- Step outputs and run results live in their rows, never here.
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL REFERENCES runs (run_id),
    ts      REAL NOT NULL,
    kind    TEXT NOT NULL,
    step    TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    data    TEXT                             -- JSON object; NULL when empty
);

CREATE INDEX events_by_run ON events (run_id, seq);

-- A request to cancel a run, kept until the run is deleted, whether the run exists yet or
-- not (its submission may still be queued); the first request's reason is kept.
CREATE TABLE cancel_requests (
    run_id       TEXT PRIMARY KEY,
    reason       TEXT,
    requested_at REAL NOT NULL
);

-- The webhook outbox (aexec.store: Webhook outbox).
CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    url         TEXT NOT NULL,
    event       TEXT NOT NULL,
    body        BLOB NOT NULL,               -- the JSON sent, fixed when the run ended
    created_at  REAL NOT NULL,
    next_at     REAL NOT NULL,               -- when it is (next) due
    status      TEXT NOT NULL DEFAULT 'pending',
    attempts    INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,                        -- delivered or given up
    last_status INTEGER,                     -- HTTP status of the last attempt
    last_error  TEXT,
    owner       TEXT,                        -- the deliverer holding its lease
    lease_until REAL
);

CREATE INDEX webhooks_by_run ON webhooks (run_id, created_at);
CREATE INDEX webhooks_due ON webhooks (next_at) WHERE status = 'pending';

-- Token buckets of rate limits, shared by the coordinators of this store.
CREATE TABLE rate_buckets (
    name       TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- Slots of concurrency caps, shared by the coordinators of this store: one row per cap
-- (gate) held by an attempt of a step, from before its dispatch until its attempt ends.
CREATE TABLE limit_slots (
    gate     TEXT NOT NULL,
    run_id   TEXT NOT NULL,
    step     TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    taken_at REAL NOT NULL,
    PRIMARY KEY (gate, run_id, step, attempt)
);

CREATE INDEX limit_slots_by_run ON limit_slots (run_id, step);

-- Steps refused a slot of a cap, waiting for one: served before steps that asked later
-- (across coordinators); a row not asked again for a while is forgotten (its coordinator
-- stopped, or the step no longer waits).
CREATE TABLE limit_waits (
    gate    TEXT NOT NULL,
    run_id  TEXT NOT NULL,
    step    TEXT NOT NULL,
    since   REAL NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (gate, run_id, step)
);
