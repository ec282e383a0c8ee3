-- Fencing and retry accounting.
--
-- A run's epoch counts how many times it was claimed, its creation included: a write is
-- fenced by the (owner, epoch) its coordinator holds.  A step's failures count its
-- attempts that really failed (not those lost with a worker or an unconfirmed dispatch),
-- so that a coordinator taking a run over restores how many retries are left.

ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
ALTER TABLE steps ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
