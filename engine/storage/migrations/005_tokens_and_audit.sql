-- API tokens (stored only as a SHA-256 of the token) and the audit trail.

CREATE TABLE api_tokens (
    name         text PRIMARY KEY,
    role         text NOT NULL,
    token_hash   text NOT NULL UNIQUE,
    hint         text NOT NULL,              -- the first characters, to tell tokens apart
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text,
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Append-only: no UPDATE, no DELETE, no TRUNCATE, except the retention purge, which says so
-- for its own transaction (SET LOCAL aetherius.audit_retention = 'on').
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor_kind  text NOT NULL,               -- token | system | file | sql | cli
    actor       text NOT NULL,
    actor_role  text,
    action      text NOT NULL,               -- e.g. workflow.create, execution.cancel, token.revoke
    target_kind text,
    target_id   text,
    client      text,                        -- the client address, for HTTP
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_recent ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_target ON audit_log (target_kind, target_id);
CREATE INDEX audit_log_actor ON audit_log (actor);

CREATE FUNCTION aetherius_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('aetherius.audit_retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION aetherius_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION aetherius_audit_append_only();

-- Every change of a stored rule is audited, whoever made it: the service says who in its
-- transaction (aetherius.actor_kind / actor / actor_role / client); anything else is SQL.
CREATE FUNCTION aetherius_rule_digest(r jsonb) RETURNS text AS $$
    -- The whole row but its bookkeeping: a column changed with SQL counts as a change.
    SELECT encode(sha256(convert_to((r - 'created_at' - 'updated_at' - 'version')::text, 'UTF8')), 'hex')
$$ LANGUAGE sql IMMUTABLE;

CREATE FUNCTION aetherius_audit_rule_change() RETURNS trigger AS $$
DECLARE
    kind   text := CASE TG_TABLE_NAME WHEN 'workflows' THEN 'workflow' ELSE 'strategy' END;
    before text := CASE WHEN TG_OP <> 'INSERT' THEN aetherius_rule_digest(to_jsonb(OLD)) END;
    after  text := CASE WHEN TG_OP <> 'DELETE' THEN aetherius_rule_digest(to_jsonb(NEW)) END;
    verb   text := CASE TG_OP WHEN 'INSERT' THEN 'create' WHEN 'UPDATE' THEN 'replace' ELSE 'delete' END;
    ident  text := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    source text := CASE WHEN TG_OP = 'DELETE' THEN OLD.source ELSE NEW.source END;
BEGIN
    IF TG_OP = 'UPDATE' AND before IS NOT DISTINCT FROM after THEN
        RETURN NULL;
    END IF;
    INSERT INTO audit_log (actor_kind, actor, actor_role, action, target_kind, target_id, client, detail)
    VALUES (coalesce(nullif(current_setting('aetherius.actor_kind', true), ''), 'sql'),
            coalesce(nullif(current_setting('aetherius.actor', true), ''), session_user),
            nullif(current_setting('aetherius.actor_role', true), ''),
            kind || '.' || verb, kind, ident,
            nullif(current_setting('aetherius.client', true), ''),
            jsonb_build_object('before', before, 'after', after, 'source', source));
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE TRIGGER workflows_audit AFTER INSERT OR UPDATE OR DELETE ON workflows
    FOR EACH ROW EXECUTE FUNCTION aetherius_audit_rule_change();
CREATE TRIGGER strategies_audit AFTER INSERT OR UPDATE OR DELETE ON strategies
    FOR EACH ROW EXECUTE FUNCTION aetherius_audit_rule_change();
