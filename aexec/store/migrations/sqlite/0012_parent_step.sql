-- A child run's parent step (run_as_child=True): the step of the run named by parent
-- that runs it (NULL for a rerun, whose parent is the run it reruns).

ALTER TABLE runs ADD COLUMN parent_step TEXT;
