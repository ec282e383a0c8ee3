-- The run a rerun was made from (aexec runs rerun).

ALTER TABLE runs ADD COLUMN parent TEXT;
