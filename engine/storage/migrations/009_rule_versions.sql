-- Versions of every workflow and strategy, whoever changed it (a rule file, the API, SQL),
-- and the arm of an experiment that an incident and its execution ran (engine.experiments).
--
-- workflow_versions (migration 001) and strategy_versions keep one row per version: the row
-- as it was stored (``definition``: to_jsonb of the row, as before), its digest (the one the
-- audit trail shows as ``after``), its source, what the change was (create, replace, delete,
-- restore) and who made it, read from the transaction's actor (engine.storage.actors), else
-- ``sql:<session user>``. A delete is kept too, as a version with the row as it was, so a
-- workflow deleted and created again goes on counting: an execution that pinned version 1 of
-- the first never finds version 1 of the second.

ALTER TABLE workflow_versions
    ADD COLUMN digest        text,
    ADD COLUMN source        text,
    ADD COLUMN change        text NOT NULL DEFAULT 'replace',
    ADD COLUMN actor_kind    text,
    ADD COLUMN actor         text,
    ADD COLUMN actor_role    text,
    ADD COLUMN restored_from integer;

CREATE TABLE strategy_versions (
    strategy_id   text NOT NULL,
    version       integer NOT NULL,
    definition    jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    digest        text,
    source        text,
    change        text NOT NULL DEFAULT 'replace',
    actor_kind    text,
    actor         text,
    actor_role    text,
    restored_from integer,
    PRIMARY KEY (strategy_id, version)
);

-- What was kept before this migration: its digest and source, and its author where the
-- audit trail (migration 005) has the change that made it.
UPDATE workflow_versions v SET digest = aetherius_rule_digest(v.definition),
       source = v.definition->>'source',
       change = CASE WHEN v.version = 1 THEN 'create' ELSE 'replace' END;
INSERT INTO strategy_versions (strategy_id, version, definition, created_at, digest, source, change)
SELECT s.id, s.version, to_jsonb(s), s.updated_at, aetherius_rule_digest(to_jsonb(s)), s.source,
       CASE WHEN s.version = 1 THEN 'create' ELSE 'replace' END
FROM strategies s;
UPDATE workflow_versions v SET (actor_kind, actor, actor_role) = (
    SELECT a.actor_kind, a.actor, a.actor_role FROM audit_log a
    WHERE a.target_kind = 'workflow' AND a.target_id = v.workflow_id AND a.detail->>'after' = v.digest
    ORDER BY abs(extract(epoch FROM a.at - v.created_at)) LIMIT 1);
UPDATE strategy_versions v SET (actor_kind, actor, actor_role) = (
    SELECT a.actor_kind, a.actor, a.actor_role FROM audit_log a
    WHERE a.target_kind = 'strategy' AND a.target_id = v.strategy_id AND a.detail->>'after' = v.digest
    ORDER BY a.at DESC LIMIT 1);

DROP TRIGGER workflows_keep ON workflows;
DROP FUNCTION aetherius_keep_workflow_version();

-- A rule created again after a delete continues its numbering.
CREATE FUNCTION aetherius_first_version() RETURNS trigger AS $$
DECLARE
    last integer;
BEGIN
    IF TG_TABLE_NAME = 'workflows' THEN
        SELECT max(version) INTO last FROM workflow_versions WHERE workflow_id = NEW.id;
    ELSE
        SELECT max(version) INTO last FROM strategy_versions WHERE strategy_id = NEW.id;
    END IF;
    NEW.version := coalesce(last, 0) + 1;
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION aetherius_keep_rule_version() RETURNS trigger AS $$
DECLARE
    doc      jsonb := CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END;
    ver      integer;
    change   text := CASE TG_OP WHEN 'INSERT' THEN 'create' WHEN 'UPDATE' THEN 'replace' ELSE 'delete' END;
    restored integer := nullif(current_setting('aetherius.restored_from', true), '')::integer;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.version = NEW.version THEN
        RETURN NULL;                       -- nothing changed (aetherius_bump_version)
    END IF;
    ver := CASE WHEN TG_OP = 'DELETE' THEN OLD.version + 1 ELSE NEW.version END;
    IF restored IS NOT NULL AND TG_OP <> 'DELETE' THEN
        change := 'restore';
    ELSE
        restored := NULL;
    END IF;
    EXECUTE format(
        'INSERT INTO %I (%I, version, definition, digest, source, change, actor_kind, actor, actor_role, '
        'restored_from) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) '
        'ON CONFLICT DO NOTHING',
        CASE TG_TABLE_NAME WHEN 'workflows' THEN 'workflow_versions' ELSE 'strategy_versions' END,
        CASE TG_TABLE_NAME WHEN 'workflows' THEN 'workflow_id' ELSE 'strategy_id' END)
    USING doc->>'id', ver, doc, aetherius_rule_digest(doc), doc->>'source', change,
          coalesce(nullif(current_setting('aetherius.actor_kind', true), ''), 'sql'),
          coalesce(nullif(current_setting('aetherius.actor', true), ''), session_user),
          nullif(current_setting('aetherius.actor_role', true), ''),
          restored;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER workflows_first_version BEFORE INSERT ON workflows
    FOR EACH ROW EXECUTE FUNCTION aetherius_first_version();
CREATE TRIGGER strategies_first_version BEFORE INSERT ON strategies
    FOR EACH ROW EXECUTE FUNCTION aetherius_first_version();
CREATE TRIGGER workflows_keep AFTER INSERT OR UPDATE OR DELETE ON workflows
    FOR EACH ROW EXECUTE FUNCTION aetherius_keep_rule_version();
CREATE TRIGGER strategies_keep AFTER INSERT OR UPDATE OR DELETE ON strategies
    FOR EACH ROW EXECUTE FUNCTION aetherius_keep_rule_version();

-- Experiments: the arm an incident was assigned (by engine.experiments.assign, carried in
-- its context), and the same on the execution started for it (a manual execution has none).
ALTER TABLE incidents ADD COLUMN arm text;
ALTER TABLE workflow_executions ADD COLUMN arm text;
CREATE INDEX incidents_experiment ON incidents (strategy_id, arm) WHERE arm IS NOT NULL;

CREATE FUNCTION aetherius_incident_arm() RETURNS trigger AS $$
BEGIN
    NEW.arm := coalesce(NEW.arm, NEW.context->>'arm');
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION aetherius_execution_arm() RETURNS trigger AS $$
BEGIN
    IF NEW.arm IS NULL THEN
        NEW.arm := (SELECT i.arm FROM incidents i WHERE i.execution_id = NEW.id AND i.status = 'open' LIMIT 1);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER incidents_arm BEFORE INSERT ON incidents
    FOR EACH ROW EXECUTE FUNCTION aetherius_incident_arm();
CREATE TRIGGER workflow_executions_arm BEFORE INSERT ON workflow_executions
    FOR EACH ROW EXECUTE FUNCTION aetherius_execution_arm();
