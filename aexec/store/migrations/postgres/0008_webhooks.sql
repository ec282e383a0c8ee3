-- The webhook outbox: one row per notification of a run's ending, written in the same
-- transaction as the run's ending event; a deliverer leases due rows, sends them, and
-- records each attempt.  The id is derived from (run, webhook, event): written twice, it
-- is stored once.
CREATE TABLE aexec_webhooks (
    id          text PRIMARY KEY,
    run_id      text COLLATE "C" NOT NULL REFERENCES aexec_runs (run_id),
    url         text NOT NULL,
    event       text NOT NULL,
    body        bytea NOT NULL,
    created_at  double precision NOT NULL,
    next_at     double precision NOT NULL,
    status      text NOT NULL DEFAULT 'pending',
    attempts    integer NOT NULL DEFAULT 0,
    finished_at double precision,
    last_status integer,
    last_error  text,
    owner       text,
    lease_until double precision
);

CREATE INDEX aexec_webhooks_by_run ON aexec_webhooks (run_id, created_at);
CREATE INDEX aexec_webhooks_due ON aexec_webhooks (next_at) WHERE status = 'pending';
