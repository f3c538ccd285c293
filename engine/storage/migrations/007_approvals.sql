-- Approvals (engine.approvals): one row per request for a human decision on one step run's
-- plan. The first decision wins: a decision is an UPDATE ... WHERE status = 'pending'.
CREATE TABLE approvals (
    id            text PRIMARY KEY,
    execution_id  text NOT NULL REFERENCES workflow_executions (id) ON DELETE CASCADE,
    step_id       text NOT NULL,
    seq           integer NOT NULL,
    plan          jsonb NOT NULL,
    plan_hash     text NOT NULL,
    action        text NOT NULL,
    target        jsonb NOT NULL,
    namespace     text,
    dry_run       boolean NOT NULL,
    approvers     text[] NOT NULL DEFAULT '{}',
    on_timeout    text NOT NULL DEFAULT 'deny' CHECK (on_timeout IN ('deny', 'approve')),
    why           text NOT NULL DEFAULT '',
    triggered_by  text,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'superseded', 'cancelled')),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    decided_at    timestamptz,
    decided_by    text,
    channel       text,
    comment       text,
    UNIQUE (execution_id, seq, plan_hash)
);
CREATE INDEX approvals_pending ON approvals (requested_at) WHERE status = 'pending';
CREATE INDEX approvals_execution ON approvals (execution_id, seq);
