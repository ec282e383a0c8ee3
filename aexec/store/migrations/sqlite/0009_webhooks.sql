-- The webhook outbox: one row per notification of a run's ending, written in the same
-- transaction as the run's ending event; a deliverer leases due rows, sends them, and
-- records each attempt.  The id is derived from (run, webhook, event): written twice, it
-- is stored once.

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
