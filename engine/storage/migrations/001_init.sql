-- Aetherius Orchestrator schema, version 1.
-- The seed's queries work against it as written:
--   SELECT id, name, status, created_at FROM workflows;
--   SELECT id, workflow_id, status, started_at, duration FROM workflow_executions ORDER BY started_at DESC LIMIT 10;
--   SELECT id, name, category, priority FROM strategies WHERE enabled = true;
-- and its INSERT INTO workflows (...) / INSERT INTO strategies (...) examples.

CREATE TABLE workflows (
    id             text PRIMARY KEY,
    name           text NOT NULL DEFAULT '',
    description    text NOT NULL DEFAULT '',
    trigger_type   text NOT NULL DEFAULT 'manual',
    trigger_config jsonb NOT NULL DEFAULT '{}'::jsonb,
    status         text NOT NULL DEFAULT 'active',
    priority       integer NOT NULL DEFAULT 5,
    timeout        text,
    steps          jsonb NOT NULL DEFAULT '[]'::jsonb,
    definition     jsonb,                       -- the whole spec as loaded (null: built from columns)
    version        integer NOT NULL DEFAULT 1,
    source         text NOT NULL DEFAULT 'sql', -- file | api | sql
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Every version a workflow ever had; executions pin (workflow_id, version).
CREATE TABLE workflow_versions (
    workflow_id text NOT NULL,
    version     integer NOT NULL,
    definition  jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE strategies (
    id          text PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    category    text NOT NULL DEFAULT 'general',
    symptoms    jsonb NOT NULL DEFAULT '[]'::jsonb,
    workflow_id text,
    priority    integer NOT NULL DEFAULT 5,
    enabled     boolean NOT NULL DEFAULT true,
    definition  jsonb,
    version     integer NOT NULL DEFAULT 1,
    source      text NOT NULL DEFAULT 'sql',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Versions bump on any change; every version of a workflow is kept; every replica hears.
CREATE FUNCTION aetherius_bump_version() RETURNS trigger AS $$
BEGIN
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION aetherius_keep_workflow_version() RETURNS trigger AS $$
BEGIN
    INSERT INTO workflow_versions (workflow_id, version, definition)
    VALUES (NEW.id, NEW.version, to_jsonb(NEW))
    ON CONFLICT (workflow_id, version) DO UPDATE SET definition = EXCLUDED.definition;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION aetherius_notify_rules() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('aetherius_rules', TG_TABLE_NAME);
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER workflows_version BEFORE UPDATE ON workflows
    FOR EACH ROW EXECUTE FUNCTION aetherius_bump_version();
CREATE TRIGGER workflows_keep AFTER INSERT OR UPDATE ON workflows
    FOR EACH ROW EXECUTE FUNCTION aetherius_keep_workflow_version();
CREATE TRIGGER strategies_version BEFORE UPDATE ON strategies
    FOR EACH ROW EXECUTE FUNCTION aetherius_bump_version();
CREATE TRIGGER workflows_notify AFTER INSERT OR UPDATE OR DELETE ON workflows
    FOR EACH STATEMENT EXECUTE FUNCTION aetherius_notify_rules();
CREATE TRIGGER strategies_notify AFTER INSERT OR UPDATE OR DELETE ON strategies
    FOR EACH STATEMENT EXECUTE FUNCTION aetherius_notify_rules();

CREATE TABLE incidents (
    id             text PRIMARY KEY,
    strategy_id    text NOT NULL,
    key            text NOT NULL,
    status         text NOT NULL DEFAULT 'open',   -- open | closed
    severity       text,
    workflow_id    text,
    execution_id   text,
    namespace      text,
    workload       text,
    node           text,
    reason         text,
    events         integer NOT NULL DEFAULT 0,
    late           integer NOT NULL DEFAULT 0,
    suppressed     integer NOT NULL DEFAULT 0,
    inhibited      jsonb NOT NULL DEFAULT '{}'::jsonb,
    context        jsonb NOT NULL DEFAULT '{}'::jsonb,
    first_seen     timestamptz,
    last_seen      timestamptz,
    opened_at      timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    cooldown_until timestamptz
);
-- One open incident per (strategy, key), across every replica.
CREATE UNIQUE INDEX incidents_one_open ON incidents (strategy_id, key) WHERE status = 'open';
CREATE INDEX incidents_recent ON incidents (opened_at DESC);
CREATE INDEX incidents_cooldown ON incidents (strategy_id, key, cooldown_until DESC);

CREATE TABLE workflow_executions (
    id               text PRIMARY KEY,
    workflow_id      text NOT NULL,
    workflow_version integer NOT NULL,
    incident_id      text,
    status           text NOT NULL,
    dry_run          boolean NOT NULL DEFAULT true,
    context          jsonb NOT NULL DEFAULT '{}'::jsonb,
    error            text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    duration         interval GENERATED ALWAYS AS (finished_at - started_at) STORED,
    owner            text                  -- the replica running it
);
CREATE INDEX workflow_executions_recent ON workflow_executions (started_at DESC);
CREATE INDEX workflow_executions_running ON workflow_executions (owner) WHERE status = 'running';

-- Live replicas. A replica's running executions and pending events are taken over by
-- another when its heartbeat stops, and by itself at once when it restarts.
CREATE TABLE replicas (
    id           text PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    info         jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE step_executions (
    execution_id       text NOT NULL REFERENCES workflow_executions (id) ON DELETE CASCADE,
    seq                integer NOT NULL,
    step_id            text NOT NULL,
    step_type          text NOT NULL,
    parent             integer,
    in_branch_of       integer,
    status             text NOT NULL,
    attempts           integer NOT NULL DEFAULT 0,
    output             jsonb,
    error              text,
    error_kind         text,
    branch             jsonb NOT NULL DEFAULT '[]'::jsonb,
    started_at         timestamptz,
    attempt_started_at timestamptz,
    finished_at        timestamptz,
    PRIMARY KEY (execution_id, seq)
);

-- Every event taken in; ``state`` says where it went, so none is lost across a crash:
-- pending (a hit waiting for its burst to form an incident), attached, inhibited,
-- suppressed, unmatched.
CREATE TABLE events (
    id          text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    source      text,
    subject     text,
    kind        text,
    namespace   text,
    name        text,
    reason      text,
    state       text NOT NULL,
    owner       text,                       -- the replica whose correlator holds it while pending
    strategy_id text,
    incident_id text,
    payload     jsonb NOT NULL
);
CREATE INDEX events_pending ON events (received_at) WHERE state = 'pending';
CREATE INDEX events_incident ON events (incident_id);

CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    source      text NOT NULL,
    subject     text,
    reason      text NOT NULL,
    raw         bytea,
    headers     jsonb
);
