-- Slots of concurrency caps (@step(concurrency=N), uses="gpu", limit_key=...), shared by
-- the coordinators of this store: one row per cap (gate) held by an attempt of a step.
-- Taken before the step is dispatched, deleted when its attempt ends (or its run does).

CREATE TABLE limit_slots (
    gate     TEXT NOT NULL,
    run_id   TEXT NOT NULL,
    step     TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    taken_at REAL NOT NULL,
    PRIMARY KEY (gate, run_id, step, attempt)
);

CREATE INDEX limit_slots_by_run ON limit_slots (run_id, step);
