-- Confirmed dispatches.
--
-- A step's confirmed column is the attempt whose step message the broker confirmed (0 for
-- none): a coordinator taking the run over leaves a queued step whose current attempt is
-- confirmed to its message, and dispatches again only those never confirmed.
ALTER TABLE aexec_steps ADD COLUMN confirmed integer NOT NULL DEFAULT 0;
