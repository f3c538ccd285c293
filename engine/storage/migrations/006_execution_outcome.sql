-- What each execution did to the cluster (engine.outcomes): remediated, dry_run,
-- waiting_approval, needs_human, failed, no_action; null while it runs.
ALTER TABLE workflow_executions ADD COLUMN outcome text;
