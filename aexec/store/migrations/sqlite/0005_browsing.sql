-- Browsing runs: the UI's runs list filters by pipeline, most recent first.
CREATE INDEX runs_by_pipeline ON runs (pipeline, created_at);
