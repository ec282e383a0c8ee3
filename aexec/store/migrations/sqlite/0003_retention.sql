-- Retention (aexec runs prune): finished runs found by when they finished, and a plan
-- found unused without reading every run.

CREATE INDEX runs_finished ON runs (finished_at, run_id)
    WHERE status = 'succeeded' OR status = 'failed' OR status = 'cancelled';
CREATE INDEX runs_by_plan ON runs (plan_digest);
