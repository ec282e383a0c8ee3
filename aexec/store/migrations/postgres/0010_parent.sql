-- The run a rerun was made from (aexec runs rerun).
ALTER TABLE aexec_runs ADD COLUMN parent text;
