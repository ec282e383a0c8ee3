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
