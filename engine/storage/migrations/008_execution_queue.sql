-- Admission (engine.service.executions): an execution that cannot start yet, because its
-- replica runs executions.max_running already, is recorded with status 'queued' and waits
-- here, first in first out by queued_at. Its replica starts it when a running one ends; if
-- that replica stops, another takes it once the heartbeat is older than service.lease.
-- started_at is when it really started (the workflow's timeout counts from there).
ALTER TABLE workflow_executions ADD COLUMN queued_at timestamptz;
CREATE INDEX workflow_executions_queued ON workflow_executions (queued_at, id) WHERE status = 'queued';
