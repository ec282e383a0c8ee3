-- Browsing runs: the UI's runs list filters by pipeline, most recent first.
CREATE INDEX aexec_runs_by_pipeline ON aexec_runs (pipeline, created_at, serial);
