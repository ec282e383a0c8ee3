-- Retention (aexec runs prune): finished runs found by when they finished, and a plan
-- found unused (or its deletion checked against its runs) without reading every run.
CREATE INDEX aexec_runs_finished ON aexec_runs (finished_at, run_id)
    WHERE status IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX aexec_runs_by_plan ON aexec_runs (plan_digest);
