-- Every statement of the SQLite run store, one named section each ("-- name: ..."),
-- loaded once by aexec.store.sqlite.  The schema lives in ../migrations/sqlite/.
--
-- "Unfinished" is written (status = 'pending' OR status = 'running') everywhere, as in the
-- partial indexes, so that SQLite uses them.  ORs rather than IN lists in the hot-path
-- updates: SQLite builds a temporary table for an IN list on every execution, which
-- doubled their cost.

-- == the connection and its schema =========================================================
-- BEGIN IMMEDIATE / COMMIT / ROLLBACK stay in the code, with the transaction they make.

-- name: use_wal
-- Readers (aexec runs list in another process) never block the writer.
PRAGMA journal_mode = WAL

-- name: sync_normal
PRAGMA synchronous = NORMAL

-- name: check_foreign_keys
PRAGMA foreign_keys = ON

-- name: data_version
-- Changes when another connection commits to the file (not when this one does).
PRAGMA data_version

-- name: schema_version
PRAGMA user_version

-- name: set_schema_version
-- A PRAGMA takes no parameters: the integer version is put in with str.format.
PRAGMA user_version = {version:d}

-- == runs ===================================================================================

-- name: insert_plan
INSERT INTO plans (digest, pipeline, data) VALUES (?, ?, ?)

-- name: plan_exists
SELECT 1 FROM plans WHERE digest = ?

-- name: run_exists
SELECT 1 FROM runs WHERE run_id = ?

-- name: insert_run
INSERT INTO runs (run_id, pipeline, plan_digest, status, priority, params, created_at,
                  started_at, finished_at, result, error, owner, lease_until, epoch, tags,
                  parent, parent_step)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: insert_step
INSERT INTO steps (run_id, position, key, name, queue, status)
VALUES (?, ?, ?, ?, ?, 'pending')

-- name: insert_expanded_step
-- The steps a map expanded into (step_expanded); once only, whatever repeats.
INSERT OR IGNORE INTO steps (run_id, position, key, name, queue, status)
VALUES (?, ?, ?, ?, ?, 'pending')

-- name: get_run
SELECT run_id, pipeline, plan_digest, status, priority, params, created_at, started_at,
       finished_at, result, error, owner, lease_until, epoch, tags, parent, parent_step
FROM runs WHERE run_id = ?

-- name: run_ids_from
-- Ids sharing a prefix sort together, right after the prefix itself.
SELECT run_id FROM runs WHERE run_id >= ? ORDER BY run_id LIMIT 2

-- name: list_runs
-- ?1 status or NULL, ?2 pipeline or NULL, ?3 limit, ?4 offset, ?5 and ?6 a tag's key and
-- value or NULL.
SELECT run_id, pipeline, plan_digest, status, priority, params, created_at, started_at,
       finished_at, result, error, owner, lease_until, epoch, tags, parent, parent_step
FROM runs
WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR pipeline = ?2)
  AND (?5 IS NULL OR EXISTS (SELECT 1 FROM json_each(runs.tags) AS tag
                             WHERE tag.key = ?5 AND tag.value = ?6))
ORDER BY created_at DESC, rowid DESC LIMIT ?3 OFFSET ?4

-- name: step_counts
-- One row per run and step status; the run ids are a JSON array.
SELECT run_id, status, count(*) FROM steps
WHERE run_id IN (SELECT value FROM json_each(?))
GROUP BY run_id, status

-- name: last_seq
SELECT coalesce(max(seq), 0) FROM events WHERE run_id = ?

-- name: run_status
SELECT status FROM runs WHERE run_id = ?

-- name: get_steps
SELECT run_id, key, name, queue, status, attempts, started_at, finished_at, worker, error,
       output, failures, confirmed
FROM steps WHERE run_id = ? ORDER BY position

-- name: get_plan
SELECT data FROM plans WHERE digest = ?

-- == the event log ==========================================================================

-- name: insert_event
INSERT INTO events (run_id, ts, kind, step, attempt, data) VALUES (?, ?, ?, ?, ?, ?)

-- name: last_insert
SELECT last_insert_rowid()

-- name: run_owners
-- The owner, epoch, status and lease of the runs named by a JSON array of ids: a fenced
-- write reads them under its write lock; a stray message's owner is looked up with them.
SELECT run_id, owner, epoch, status, lease_until FROM runs
WHERE run_id IN (SELECT value FROM json_each(?))

-- name: get_events
-- LIMIT -1 is no limit.
SELECT seq, run_id, ts, kind, step, attempt, data
FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?

-- == each event's row change ================================================================
-- One section per event kind that changes a row, named after it: the table of
-- aexec.store.fold (apply_to_run, apply_to_step) in SQL.  Kinds without a section here
-- (run_submitted, run_resumed, step_progress) are logged and change no row.
--
-- A finished run never changes again; run_started moves only a pending run.

-- name: run_started
UPDATE runs SET status = 'running', started_at = :ts
WHERE run_id = :run_id AND status = 'pending'

-- name: run_succeeded
UPDATE runs SET status = 'succeeded', finished_at = :ts, result = :output
WHERE run_id = :run_id AND (status = 'pending' OR status = 'running')

-- name: run_failed
UPDATE runs SET status = 'failed', finished_at = :ts, error = :error
WHERE run_id = :run_id AND (status = 'pending' OR status = 'running')

-- name: run_cancelled
UPDATE runs SET status = 'cancelled', finished_at = :ts, error = :error
WHERE run_id = :run_id AND (status = 'pending' OR status = 'running')

-- Step changes are compare-and-set on the attempt: only the current (or a newer) attempt of
-- an unfinished step moves it.

-- name: step_dispatched
UPDATE steps SET status = 'queued', attempts = :attempt
WHERE run_id = :run_id AND key = :step AND attempts <= :attempt
  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')

-- name: step_started
UPDATE steps SET status = 'running', attempts = :attempt, started_at = :ts, worker = :worker
WHERE run_id = :run_id AND key = :step AND attempts <= :attempt
  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')

-- name: step_retrying
UPDATE steps SET status = 'retrying', attempts = :attempt, error = :error,
                 failures = failures + :failure
WHERE run_id = :run_id AND key = :step AND attempts <= :attempt
  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')

-- name: step_waiting
-- A step asked to run again later (aexec.again): retrying, without counting a failure.
UPDATE steps SET status = 'retrying', attempts = :attempt, error = :error
WHERE run_id = :run_id AND key = :step AND attempts <= :attempt
  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')

-- name: step_succeeded
UPDATE steps SET status = 'succeeded', attempts = :attempt, output = :output,
                 finished_at = :ts, error = NULL
WHERE run_id = :run_id AND key = :step AND attempts <= :attempt
  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')

-- name: step_failed
UPDATE steps SET status = 'failed', attempts = :attempt, error = :error, finished_at = :ts,
                 failures = failures + :failure
WHERE run_id = :run_id AND key = :step AND attempts <= :attempt
  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')

-- name: step_skipped
UPDATE steps SET status = 'skipped', attempts = :attempt
WHERE run_id = :run_id AND key = :step AND attempts <= :attempt
  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')

-- name: step_cancelled
UPDATE steps SET status = 'cancelled', attempts = :attempt
WHERE run_id = :run_id AND key = :step AND attempts <= :attempt
  AND (status = 'pending' OR status = 'queued' OR status = 'running' OR status = 'retrying')

-- == leases =================================================================================
-- "Now" is the caller's clock (time.time()), read under the write lock.

-- name: claimable_runs
-- Claimable: unfinished, and no owner, no lease end, or a lease that ended.
SELECT run_id, pipeline, plan_digest, status, priority, params, created_at, started_at,
       finished_at, result, error, owner, lease_until, epoch, tags, parent, parent_step
FROM runs
WHERE (status = 'pending' OR status = 'running')
  AND (owner IS NULL OR lease_until IS NULL OR lease_until < ?)
ORDER BY created_at, rowid LIMIT ?

-- name: claim_run
-- Each claim is a new epoch: writes fenced by an earlier one are refused.
UPDATE runs SET owner = ?, lease_until = ?, epoch = epoch + 1 WHERE run_id = ?

-- name: renew_leases
UPDATE runs SET lease_until = ?
WHERE owner = ? AND (status = 'pending' OR status = 'running')
RETURNING run_id

-- name: renew_held_leases
-- The runs held, as a JSON object {run_id: epoch}, that the owner still owns at that epoch.
UPDATE runs SET lease_until = :until
FROM (SELECT key AS run_id, value AS epoch FROM json_each(:held)) AS held
WHERE runs.run_id = held.run_id AND runs.epoch = held.epoch AND runs.owner = :owner
  AND (runs.status = 'pending' OR runs.status = 'running')
RETURNING runs.run_id

-- name: release_runs
UPDATE runs SET lease_until = 0 WHERE owner = ? AND (status = 'pending' OR status = 'running')

-- name: release_run
UPDATE runs SET lease_until = 0
WHERE owner = ? AND (status = 'pending' OR status = 'running') AND run_id = ?

-- == retention ==============================================================================

-- name: finished_runs
-- Keyset pages: (finished_at, run_id) after the previous page's last.
SELECT run_id, pipeline, plan_digest, status, priority, params, created_at, started_at,
       finished_at, result, error, owner, lease_until, epoch, tags, parent, parent_step
FROM runs
WHERE (status = 'succeeded' OR status = 'failed' OR status = 'cancelled')
  AND finished_at < :before AND (finished_at, run_id) > (:after_ts, :after_id)
ORDER BY finished_at, run_id LIMIT :limit

-- name: finished_run
-- Under the write lock: a run that is finished now stays finished.
SELECT plan_digest FROM runs
WHERE run_id = ? AND (status = 'succeeded' OR status = 'failed' OR status = 'cancelled')

-- name: delete_run_events
DELETE FROM events WHERE run_id = ?

-- name: delete_run_steps
DELETE FROM steps WHERE run_id = ?

-- name: delete_run
DELETE FROM runs WHERE run_id = ?

-- name: delete_plan_if_unused
DELETE FROM plans
WHERE digest = ? AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.plan_digest = plans.digest)

-- name: confirm_dispatch
-- The broker confirmed this attempt's step message: kept for the attempt still current.
UPDATE steps SET confirmed = :attempt
WHERE run_id = :run_id AND key = :key AND attempts = :attempt AND confirmed < :attempt

-- == cancel requests ========================================================================

-- name: request_cancel
INSERT INTO cancel_requests (run_id, reason, requested_at) VALUES (?, ?, ?)
ON CONFLICT (run_id) DO NOTHING

-- name: cancel_requests
SELECT run_id, reason FROM cancel_requests WHERE run_id IN (SELECT value FROM json_each(?))

-- name: delete_cancel_request
DELETE FROM cancel_requests WHERE run_id = ?

-- == webhook outbox =========================================================================

-- name: insert_delivery
INSERT INTO webhooks (id, run_id, url, event, body, created_at, next_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING

-- name: due_deliveries
-- $1 now, $2 limit: pending, due, and no live lease.
SELECT id FROM webhooks
WHERE status = 'pending' AND next_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)
ORDER BY next_at, id
LIMIT ?2

-- name: lease_delivery
UPDATE webhooks SET owner = ?, lease_until = ? WHERE id = ?

-- name: get_delivery
SELECT id, run_id, url, event, body, created_at, next_at, status, attempts, finished_at,
       last_status, last_error
FROM webhooks WHERE id = ?

-- name: held_delivery
SELECT id, run_id, url, event, body, created_at, next_at, status, attempts, finished_at,
       last_status, last_error
FROM webhooks WHERE id = ? AND owner = ? AND status = 'pending'

-- name: settle_delivery
UPDATE webhooks
SET next_at = :next_at, status = :status, attempts = :attempts, finished_at = :finished_at,
    last_status = :last_status, last_error = :last_error, owner = NULL, lease_until = NULL
WHERE id = :id

-- name: run_deliveries
SELECT id, run_id, url, event, body, created_at, next_at, status, attempts, finished_at,
       last_status, last_error
FROM webhooks WHERE run_id = ? ORDER BY created_at, id

-- name: next_delivery_at
-- When a delivery can next be claimed: it is due, and its lease (if any) has ended.
SELECT min(max(next_at, coalesce(lease_until, 0))) FROM webhooks WHERE status = 'pending'

-- name: delete_run_deliveries
DELETE FROM webhooks WHERE run_id = ?

-- name: get_bucket
SELECT tokens, updated_at FROM rate_buckets WHERE name = ?

-- name: put_bucket
INSERT INTO rate_buckets (name, tokens, updated_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at

-- name: gate_usage
-- The slots of cap :gate held, and whether step :step of run :run_id (an attempt of it)
-- holds one.
SELECT count(*), coalesce(max(run_id = :run_id AND step = :step), 0)
FROM limit_slots WHERE gate = :gate

-- name: prune_gate
-- The slots of cap :gate held by runs that ended (or were deleted): a coordinator stopped
-- before it freed them.
DELETE FROM limit_slots
WHERE gate = :gate
  AND NOT EXISTS (
      SELECT 1 FROM runs
      WHERE runs.run_id = limit_slots.run_id
        AND runs.status NOT IN ('succeeded', 'failed', 'cancelled')
  )

-- name: put_slot
-- The slot that an earlier attempt of the step holds passes to the new one.
INSERT OR REPLACE INTO limit_slots (gate, run_id, step, attempt, taken_at)
SELECT :gate, :run_id, :step, :attempt, :now
WHERE NOT EXISTS (
    SELECT 1 FROM limit_slots
    WHERE gate = :gate AND run_id = :run_id AND step = :step AND attempt = :attempt
)

-- name: drop_step_slot
DELETE FROM limit_slots
WHERE gate = :gate AND run_id = :run_id AND step = :step AND attempt <> :attempt

-- name: release_step_slots
DELETE FROM limit_slots WHERE run_id = ? AND step = ? AND attempt <= ?

-- name: release_run_slots
DELETE FROM limit_slots WHERE run_id = ?

-- name: run_slot_steps
SELECT DISTINCT step FROM limit_slots WHERE run_id = ?

-- name: release_slots_of_step
DELETE FROM limit_slots WHERE run_id = ? AND step = ?

-- name: slot_holders
SELECT run_id, step, attempt FROM limit_slots WHERE gate = ?
ORDER BY taken_at, run_id, step, attempt

-- name: waits_ahead
-- The steps waiting for cap :gate that asked before step :step of run :run_id did (or
-- before :now if it did not wait yet), among those asked again since :fresh.
SELECT count(*) FROM limit_waits AS w
WHERE w.gate = :gate AND w.seen_at >= :fresh AND NOT (w.run_id = :run_id AND w.step = :step)
  AND w.since < coalesce(
      (SELECT since FROM limit_waits WHERE gate = :gate AND run_id = :run_id AND step = :step),
      :now
  )

-- name: drop_stale_waits
DELETE FROM limit_waits WHERE gate = ? AND seen_at < ?

-- name: put_wait
INSERT INTO limit_waits (gate, run_id, step, since, seen_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (gate, run_id, step) DO UPDATE SET seen_at = excluded.seen_at

-- name: drop_step_wait
DELETE FROM limit_waits WHERE gate = ? AND run_id = ? AND step = ?

-- name: release_run_waits
DELETE FROM limit_waits WHERE run_id = ?
