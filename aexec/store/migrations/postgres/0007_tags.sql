-- Run tags: labels (a JSON object of text to text) to find runs by, in the UI and the API.
ALTER TABLE aexec_runs ADD COLUMN tags jsonb NOT NULL DEFAULT '{}';
CREATE INDEX aexec_runs_by_tags ON aexec_runs USING gin (tags jsonb_path_ops);
