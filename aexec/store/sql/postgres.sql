-- Every statement of the PostgreSQL run store, one named section each ("-- name: ..."),
-- loaded once by aexec.store.postgres.  The schema lives in ../migrations/postgres/.
--
-- Locks: every statement that may wait for a run row locks run rows in run_id order
-- (append, renew, release), and claiming skips locked rows, so no two of them deadlock.

-- == migrations =============================================================================

-- name: lock_migrations
-- Held until the migrating transaction ends: two stores opening one new database migrate
-- it once.
SELECT pg_advisory_xact_lock($1)

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS aexec_migrations (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: applied_migrations
SELECT version FROM aexec_migrations ORDER BY version

-- name: record_migration
INSERT INTO aexec_migrations (version) VALUES ($1)

-- == runs ===================================================================================

-- name: insert_plan
INSERT INTO aexec_plans (digest, pipeline, data) VALUES ($1, $2, $3)
ON CONFLICT (digest) DO NOTHING

-- name: insert_run
-- Returns nothing when the run already exists.
INSERT INTO aexec_runs (run_id, pipeline, plan_digest, status, priority, params, created_at,
                        started_at, finished_at, result, error, owner, lease_until, epoch,
                        tags, parent, parent_step)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::jsonb, $16, $17)
ON CONFLICT (run_id) DO NOTHING
RETURNING serial

-- name: insert_steps
INSERT INTO aexec_steps (run_id, position, key, name, queue, status)
SELECT $1, step.position, step.key, step.name, step.queue, 'pending'
FROM unnest($2::integer[], $3::text[], $4::text[], $5::text[])
     AS step (position, key, name, queue)

-- name: insert_expanded_steps
-- The steps a map expanded into (step_expanded); once only, whatever repeats.
INSERT INTO aexec_steps (run_id, position, key, name, queue, status)
SELECT $1, step.position, step.key, step.name, step.queue, 'pending'
FROM unnest($2::integer[], $3::text[], $4::text[], $5::text[])
     AS step (position, key, name, queue)
ON CONFLICT (run_id, key) DO NOTHING

-- name: get_run
SELECT run_id, pipeline, plan_digest, status, priority, params, created_at, started_at,
       finished_at, result, error, owner, lease_until, epoch, tags::text, parent, parent_step
FROM aexec_runs WHERE run_id = $1

-- name: run_ids_from
-- Ids sharing a prefix sort together, right after the prefix itself (COLLATE "C").
SELECT run_id FROM aexec_runs WHERE run_id >= $1 ORDER BY run_id LIMIT 2

-- name: list_runs
-- $1 status or NULL, $2 pipeline or NULL, $3 limit, $4 offset, $5 a tag as a JSON object
-- (one key and its value) or NULL.
SELECT run_id, pipeline, plan_digest, status, priority, params, created_at, started_at,
       finished_at, result, error, owner, lease_until, epoch, tags::text, parent, parent_step
FROM aexec_runs
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR pipeline = $2)
  AND ($5::jsonb IS NULL OR tags @> $5::jsonb)
ORDER BY created_at DESC, serial DESC
LIMIT $3 OFFSET $4

-- name: step_counts
SELECT run_id, status, count(*) AS n FROM aexec_steps
WHERE run_id = ANY($1::text[])
GROUP BY run_id, status

-- name: last_seq
SELECT coalesce(max(seq), 0) FROM aexec_events WHERE run_id = $1

-- name: run_status
SELECT status FROM aexec_runs WHERE run_id = $1

-- name: get_steps
SELECT run_id, key, name, queue, status, attempts, started_at, finished_at, worker, error,
       output, failures, confirmed
FROM aexec_steps WHERE run_id = $1 ORDER BY position

-- name: get_plan
SELECT data FROM aexec_plans WHERE digest = $1

-- == the event log ==========================================================================

-- name: lock_runs
-- The first statement of an append: lock the batch's runs in id order, so that two appends
-- to one run commit in seq order (a follower reading "seq > last" misses nothing), and
-- queue one wake-up per run for followers (sent at commit, dropped at rollback; an id too
-- long for a NOTIFY payload gets none: its followers poll).  Returns the runs that exist
-- with their owner, epoch and status, which a fenced write checks before writing.
SELECT locked.run_id, locked.owner, locked.epoch, locked.status
FROM (
    SELECT run_id, owner, epoch, status FROM aexec_runs
    WHERE run_id = ANY($1::text[])
    ORDER BY run_id
    FOR NO KEY UPDATE
) AS locked
LEFT JOIN LATERAL (
    SELECT pg_notify('aexec_events', locked.run_id) WHERE octet_length(locked.run_id) < 8000
) AS notified ON true

-- name: insert_events
-- Inserted in batch order, so the batch's seqs, sorted, are its events' seqs in order.
WITH logged AS (
    INSERT INTO aexec_events (run_id, ts, kind, step, attempt, data)
    SELECT event.run_id, event.ts, event.kind, event.step, event.attempt, event.data
    FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[], $5::integer[], $6::text[])
         WITH ORDINALITY AS event (run_id, ts, kind, step, attempt, data, n)
    ORDER BY event.n
    RETURNING seq
)
SELECT seq FROM logged ORDER BY seq

-- name: update_steps
-- One round of step changes (each step at most once): compare-and-set on the attempt,
-- only an unfinished step moves.  The new status says which columns change, as in
-- aexec.store.fold.apply_to_step (the same rule in Python; a property test holds them equal).
UPDATE aexec_steps AS step
SET status = change.status,
    attempts = change.attempt,
    failures = step.failures + change.failure,
    started_at = CASE WHEN change.status = 'running' THEN change.ts ELSE step.started_at END,
    worker = CASE WHEN change.status = 'running' THEN change.worker ELSE step.worker END,
    output = CASE WHEN change.status = 'succeeded' THEN change.output ELSE step.output END,
    finished_at = CASE WHEN change.status IN ('succeeded', 'failed') THEN change.ts
                       ELSE step.finished_at END,
    error = CASE WHEN change.status IN ('retrying', 'failed') THEN change.error
                 WHEN change.status = 'succeeded' THEN NULL
                 ELSE step.error END
FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::float8[], $6::text[],
            $7::text[], $8::bytea[], $9::integer[])
     AS change (run_id, key, status, attempt, ts, worker, error, output, failure)
WHERE step.run_id = change.run_id AND step.key = change.key
  AND step.attempts <= change.attempt
  AND step.status IN ('pending', 'queued', 'running', 'retrying')

-- name: update_runs
-- One round of run changes (each run at most once): run_started moves only a pending run,
-- an ending event only an unfinished one; a finished run never changes.  As
-- aexec.store.fold.apply_to_run.
UPDATE aexec_runs AS run
SET status = change.status,
    started_at = CASE WHEN change.status = 'running' THEN change.ts ELSE run.started_at END,
    finished_at = CASE WHEN change.status = 'running' THEN run.finished_at ELSE change.ts END,
    result = CASE WHEN change.status = 'succeeded' THEN change.output ELSE run.result END,
    error = CASE WHEN change.status IN ('failed', 'cancelled') THEN change.error
                 ELSE run.error END
FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::bytea[])
     AS change (run_id, status, ts, error, output)
WHERE run.run_id = change.run_id
  AND (run.status = 'pending' OR (run.status = 'running' AND change.status <> 'running'))

-- name: get_events
-- LIMIT NULL is no limit.
SELECT seq, run_id, ts, kind, step, attempt, data
FROM aexec_events
WHERE run_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3

-- == leases =================================================================================
-- "Now" is the database's clock: one clock for every coordinator.

-- name: acquire_runs
-- Claimable: unfinished, and no owner, no lease end, or a lease that ended.  SKIP LOCKED:
-- a concurrent claimer (or an append) holds those rows; they are not ours to take now.
-- Each claim is a new epoch: writes fenced by an earlier one are refused.
WITH claimable AS (
    SELECT run_id FROM aexec_runs
    WHERE status IN ('pending', 'running')
      AND (owner IS NULL OR lease_until IS NULL
           OR lease_until < extract(epoch FROM clock_timestamp())::float8)
    ORDER BY created_at, serial
    LIMIT $3
    FOR NO KEY UPDATE SKIP LOCKED
)
UPDATE aexec_runs AS run
SET owner = $1, lease_until = extract(epoch FROM clock_timestamp())::float8 + $2,
    epoch = run.epoch + 1
FROM claimable
WHERE run.run_id = claimable.run_id
RETURNING run.serial, run.run_id, run.pipeline, run.plan_digest, run.status, run.priority,
          run.params, run.created_at, run.started_at, run.finished_at, run.result, run.error,
          run.owner, run.lease_until, run.epoch, run.tags::text, run.parent, run.parent_step

-- name: renew_leases
WITH owned AS (
    SELECT run_id FROM aexec_runs
    WHERE owner = $1 AND status IN ('pending', 'running')
    ORDER BY run_id
    FOR NO KEY UPDATE
)
UPDATE aexec_runs AS run
SET lease_until = extract(epoch FROM clock_timestamp())::float8 + $2
FROM owned
WHERE run.run_id = owned.run_id
RETURNING run.run_id

-- name: renew_held_leases
-- The runs held ($3 ids, $4 their epochs) that the owner still owns at that epoch.
WITH owned AS (
    SELECT run.run_id FROM aexec_runs AS run
    JOIN unnest($3::text[], $4::integer[]) AS held (run_id, epoch)
      ON run.run_id = held.run_id AND run.epoch = held.epoch
    WHERE run.owner = $1 AND run.status IN ('pending', 'running')
    ORDER BY run.run_id
    FOR NO KEY UPDATE OF run
)
UPDATE aexec_runs AS run
SET lease_until = extract(epoch FROM clock_timestamp())::float8 + $2
FROM owned
WHERE run.run_id = owned.run_id
RETURNING run.run_id

-- name: run_owners
-- Who owns these runs, and whether that lease is live by the database's clock.
SELECT run_id, status, owner, epoch,
       coalesce(lease_until >= extract(epoch FROM clock_timestamp())::float8, false)
FROM aexec_runs WHERE run_id = ANY($1::text[])

-- name: release_runs
-- $2 NULL: every unfinished run of the owner.
WITH owned AS (
    SELECT run_id FROM aexec_runs
    WHERE owner = $1 AND status IN ('pending', 'running')
      AND ($2::text[] IS NULL OR run_id = ANY($2::text[]))
    ORDER BY run_id
    FOR NO KEY UPDATE
)
UPDATE aexec_runs AS run
SET lease_until = 0
FROM owned
WHERE run.run_id = owned.run_id

-- == retention ==============================================================================

-- name: finished_runs
-- Keyset pages: (finished_at, run_id) after the previous page's last ($3, $4).
SELECT run_id, pipeline, plan_digest, status, priority, params, created_at, started_at,
       finished_at, result, error, owner, lease_until, epoch, tags::text, parent, parent_step
FROM aexec_runs
WHERE status IN ('succeeded', 'failed', 'cancelled') AND finished_at < $1
  AND (finished_at, run_id) > ($3, $4)
ORDER BY finished_at, run_id
LIMIT $2

-- name: lock_finished_runs
-- The first statement of a deletion: the finished runs of $1, locked (in id order, as
-- every statement that locks run rows) until the transaction ends.
SELECT run_id, plan_digest FROM aexec_runs
WHERE run_id = ANY($1::text[]) AND status IN ('succeeded', 'failed', 'cancelled')
ORDER BY run_id
FOR UPDATE

-- name: delete_events_of_runs
DELETE FROM aexec_events WHERE run_id = ANY($1::text[])

-- name: delete_steps_of_runs
DELETE FROM aexec_steps WHERE run_id = ANY($1::text[])

-- name: delete_runs
DELETE FROM aexec_runs WHERE run_id = ANY($1::text[])

-- name: delete_unused_plans
-- A submission may be inserting a run of one of these plans right now: its insert then
-- fails on the foreign key, and create_run reports that as transient (it is retried and
-- stores the plan again).
DELETE FROM aexec_plans AS plan
WHERE plan.digest = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM aexec_runs AS run WHERE run.plan_digest = plan.digest)

-- name: current_transaction
-- The first statement of an append: the transaction's id, to find out whether it committed
-- if the connection fails during COMMIT.
SELECT txid_current()

-- name: transaction_status
SELECT txid_status($1)

-- name: end_backend
-- The server process of a connection that failed during COMMIT: ended, so that a COMMIT
-- still on its way (a stalled link) cannot land after the status was read.
SELECT pg_terminate_backend($1)

-- name: confirm_dispatches
-- The broker confirmed these attempts' step messages: kept for the attempt still current.
UPDATE aexec_steps AS step
SET confirmed = sent.attempt
FROM unnest($1::text[], $2::text[], $3::integer[]) AS sent (run_id, key, attempt)
WHERE step.run_id = sent.run_id AND step.key = sent.key
  AND step.attempts = sent.attempt AND step.confirmed < sent.attempt

-- == cancel requests ========================================================================

-- name: request_cancel
INSERT INTO aexec_cancel_requests (run_id, reason, requested_at)
VALUES ($1, $2, extract(epoch FROM clock_timestamp())::float8)
ON CONFLICT (run_id) DO NOTHING

-- name: cancel_requests
SELECT run_id, reason FROM aexec_cancel_requests WHERE run_id = ANY($1::text[])

-- name: delete_cancel_requests
DELETE FROM aexec_cancel_requests WHERE run_id = ANY($1::text[])

-- == webhook outbox =========================================================================

-- name: insert_deliveries
-- In the transaction of the events that end the runs; an id stored already is kept.
INSERT INTO aexec_webhooks (id, run_id, url, event, body, created_at, next_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                     $6::float8[], $7::float8[])
ON CONFLICT (id) DO NOTHING

-- name: claim_deliveries
-- $1 owner, $2 now, $3 lease, $4 limit.  SKIP LOCKED: another deliverer is taking those.
UPDATE aexec_webhooks SET owner = $1, lease_until = $2 + $3
WHERE id IN (
    SELECT id FROM aexec_webhooks
    WHERE status = 'pending' AND next_at <= $2 AND (lease_until IS NULL OR lease_until <= $2)
    ORDER BY next_at, id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
RETURNING id, run_id, url, event, body, created_at, next_at, status, attempts, finished_at,
          last_status, last_error

-- name: held_delivery
SELECT id, run_id, url, event, body, created_at, next_at, status, attempts, finished_at,
       last_status, last_error
FROM aexec_webhooks WHERE id = $1 AND owner = $2 AND status = 'pending'
FOR UPDATE

-- name: settle_delivery
UPDATE aexec_webhooks
SET next_at = $2, status = $3, attempts = $4, finished_at = $5, last_status = $6,
    last_error = $7, owner = NULL, lease_until = NULL
WHERE id = $1

-- name: run_deliveries
SELECT id, run_id, url, event, body, created_at, next_at, status, attempts, finished_at,
       last_status, last_error
FROM aexec_webhooks WHERE run_id = $1 ORDER BY created_at, id

-- name: next_delivery_at
-- When a delivery can next be claimed: it is due, and its lease (if any) has ended.
SELECT min(greatest(next_at, coalesce(lease_until, 0))) FROM aexec_webhooks
WHERE status = 'pending'

-- name: delete_deliveries_of_runs
DELETE FROM aexec_webhooks WHERE run_id = ANY($1::text[])

-- name: create_bucket
-- A new bucket is full ($2 tokens); the database's clock is every coordinator's clock.
INSERT INTO aexec_rate_buckets (name, tokens, updated_at)
VALUES ($1, $2, extract(epoch FROM clock_timestamp()))
ON CONFLICT (name) DO NOTHING

-- name: lock_bucket
SELECT tokens, updated_at, extract(epoch FROM clock_timestamp())::double precision
FROM aexec_rate_buckets WHERE name = $1
FOR UPDATE

-- name: put_bucket
UPDATE aexec_rate_buckets SET tokens = $2, updated_at = $3 WHERE name = $1

-- name: lock_gate
-- Takes of one cap's slots are serialised, by every coordinator of this database.
SELECT pg_advisory_xact_lock(hashtextextended('aexec_limit_slots:' || $1, 0))

-- name: gate_usage
-- The slots of cap $1 held; whether step $3 of run $2 (an attempt of it) holds one; and
-- how many steps waiting for the cap asked before it did (or before now, $4, if it does
-- not wait yet), among those asked again since $5.
SELECT
    (SELECT count(*)::integer FROM aexec_limit_slots WHERE gate = $1),
    EXISTS (SELECT 1 FROM aexec_limit_slots WHERE gate = $1 AND run_id = $2 AND step = $3),
    (SELECT count(*)::integer FROM aexec_limit_waits AS w
     WHERE w.gate = $1 AND w.seen_at >= $5 AND NOT (w.run_id = $2 AND w.step = $3)
       AND w.since < coalesce(
           (SELECT since FROM aexec_limit_waits WHERE gate = $1 AND run_id = $2 AND step = $3),
           $4
       ))

-- name: prune_gate
-- The slots of cap $1 held by runs that ended (or were deleted): a coordinator stopped
-- before it freed them.
DELETE FROM aexec_limit_slots AS slot
WHERE slot.gate = $1
  AND NOT EXISTS (
      SELECT 1 FROM aexec_runs AS run
      WHERE run.run_id = slot.run_id AND run.status NOT IN ('succeeded', 'failed', 'cancelled')
  )

-- name: put_slots
-- Step $3 of run $2 takes caps $1 for attempt $4: it waits for them no more, and the
-- slots that an earlier attempt of it holds pass to this one.
WITH waited AS (
    DELETE FROM aexec_limit_waits WHERE gate = ANY($1::text[]) AND run_id = $2 AND step = $3
), earlier AS (
    DELETE FROM aexec_limit_slots
    WHERE gate = ANY($1::text[]) AND run_id = $2 AND step = $3 AND attempt <> $4
)
INSERT INTO aexec_limit_slots (gate, run_id, step, attempt, taken_at)
SELECT gate, $2, $3, $4, extract(epoch FROM clock_timestamp())
FROM unnest($1::text[]) AS gate
ON CONFLICT DO NOTHING

-- name: release_steps_slots
-- Free the slots of steps $2 of runs $1, held by their attempts up to $3 (each).
DELETE FROM aexec_limit_slots AS slot
USING unnest($1::text[], $2::text[], $3::integer[]) AS free (run_id, step, attempt)
WHERE slot.run_id = free.run_id AND slot.step = free.step AND slot.attempt <= free.attempt

-- name: release_runs_slots
DELETE FROM aexec_limit_slots WHERE run_id = ANY($1::text[])

-- name: release_runs_waits
DELETE FROM aexec_limit_waits WHERE run_id = ANY($1::text[])

-- name: prune_run_slots
-- A run taken over: only its steps still queued or running ($2) keep their slots.
DELETE FROM aexec_limit_slots WHERE run_id = $1 AND NOT (step = ANY($2::text[]))

-- name: run_slot_steps
SELECT DISTINCT step FROM aexec_limit_slots WHERE run_id = $1

-- name: slot_holders
SELECT run_id, step, attempt FROM aexec_limit_slots WHERE gate = $1
ORDER BY taken_at, run_id, step, attempt

-- name: clock
SELECT extract(epoch FROM clock_timestamp())::double precision

-- name: put_wait
-- Step $3 of run $2 waits for cap $1 (since now, $4, unless it asked since $5 already),
-- and the steps that were not asked for again since $5 are forgotten.
WITH stale AS (
    DELETE FROM aexec_limit_waits
    WHERE gate = $1 AND seen_at < $5 AND NOT (run_id = $2 AND step = $3)
)
INSERT INTO aexec_limit_waits AS w (gate, run_id, step, since, seen_at)
VALUES ($1, $2, $3, $4, $4)
ON CONFLICT (gate, run_id, step) DO UPDATE
SET seen_at = excluded.seen_at,
    since = CASE WHEN w.seen_at < $5 THEN excluded.since ELSE w.since END
