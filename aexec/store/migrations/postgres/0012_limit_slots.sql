-- Slots of concurrency caps (@step(concurrency=N), uses="gpu", limit_key=...), shared by
-- the coordinators of this database: one row per cap (gate) held by an attempt of a step.
-- Taken before the step is dispatched, deleted when its attempt ends (or its run does).
CREATE TABLE aexec_limit_slots (
    gate     text COLLATE "C" NOT NULL,
    run_id   text COLLATE "C" NOT NULL,
    step     text COLLATE "C" NOT NULL,
    attempt  integer NOT NULL,
    taken_at double precision NOT NULL,
    PRIMARY KEY (gate, run_id, step, attempt)
);

CREATE INDEX aexec_limit_slots_by_run ON aexec_limit_slots (run_id, step);
