-- Run leases: which coordinator drives each unfinished run, and until when.
--
-- A run is claimable while it is unfinished and has no owner, no lease end, or a lease that
-- ended; a finished run keeps its owner.

ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_until REAL;   -- seconds since the epoch

-- Claiming and renewing look only at unfinished runs (the same WHERE as the queries).
CREATE INDEX runs_unfinished ON runs (created_at)
    WHERE status = 'pending' OR status = 'running';
CREATE INDEX runs_unfinished_by_owner ON runs (owner)
    WHERE status = 'pending' OR status = 'running';
