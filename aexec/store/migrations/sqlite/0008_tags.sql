-- Run tags: labels (a JSON object of text to text) to find runs by, in the UI and the API.
ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '{}';
