-- Durable cancel requests.
--
-- A request to cancel a run is kept here until the run is deleted, whether the run exists
-- yet or not (its submission may still be queued): whichever coordinator starts, drives
-- or takes over the run honours it.  The first request's reason is kept.
CREATE TABLE aexec_cancel_requests (
    run_id       text PRIMARY KEY,
    reason       text,
    requested_at double precision NOT NULL
);
