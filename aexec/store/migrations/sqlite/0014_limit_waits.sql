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
