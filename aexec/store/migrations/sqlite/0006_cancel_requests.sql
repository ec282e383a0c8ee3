-- Durable cancel requests.
--
-- A request to cancel a run is kept here until the run is deleted, whether the run exists
-- yet or not (its submission may still be queued): whichever coordinator starts, drives
-- or takes over the run honours it.  The first request's reason is kept.

CREATE TABLE cancel_requests (
    run_id       TEXT PRIMARY KEY,
    reason       TEXT,
    requested_at REAL NOT NULL
);
