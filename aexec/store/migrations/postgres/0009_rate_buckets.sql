-- Token buckets of rate limits (@step(rate_limit=...)), shared by the coordinators of
-- this database: the tokens a bucket held at updated_at (seconds since the epoch, by the
-- database's clock).
CREATE TABLE aexec_rate_buckets (
    name       text COLLATE "C" PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at double precision NOT NULL
);
