-- Token buckets of rate limits (@step(rate_limit=...)), shared by the coordinators of
-- this store: the tokens a bucket held at updated_at (seconds since the epoch).

CREATE TABLE rate_buckets (
    name       TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at REAL NOT NULL
);
