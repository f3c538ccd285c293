-- The web console's sessions (/ui/login): a random session id in an HttpOnly cookie, stored
-- here only as its SHA-256. A session acts as the token it was opened with, and ends with
-- it: a revoked, expired or re-issued token (another token_hash) ends its sessions at once.
CREATE TABLE console_sessions (
    id_hash     text PRIMARY KEY,
    token_name  text NOT NULL,
    token_hash  text NOT NULL,
    client      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
