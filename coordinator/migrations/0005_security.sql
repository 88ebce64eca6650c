-- Security: operator and enrollment tokens, and the agent certificates the built-in CA issued.

-- Bearer tokens. Only the sha256 of a token's secret is kept: the secret is shown once, when
-- the token is created.
CREATE TABLE tokens (
    id                  TEXT PRIMARY KEY NOT NULL,
    -- operator | enrollment
    kind                TEXT NOT NULL,
    -- Operator tokens: who holds it (the audit log's actor). Enrollment tokens: the agent
    -- it may enroll.
    name                TEXT NOT NULL,
    -- viewer | operator | admin; '' for enrollment tokens.
    role                TEXT NOT NULL DEFAULT '',
    secret_sha256       TEXT NOT NULL UNIQUE,
    created_by          TEXT NOT NULL,
    created_unix_ms     INTEGER NOT NULL,
    expires_unix_ms     INTEGER NOT NULL,
    -- Enrollment tokens work once: when it was used (0: not yet).
    used_unix_ms        INTEGER NOT NULL DEFAULT 0,
    revoked_unix_ms     INTEGER NOT NULL DEFAULT 0
);

-- Every agent certificate the coordinator's CA signed. A certificate is accepted only while
-- it is here and not revoked: `warden agent revoke` revokes every certificate of an agent.
CREATE TABLE agent_certificates (
    serial              TEXT PRIMARY KEY NOT NULL,
    agent               TEXT NOT NULL,
    issued_unix_ms      INTEGER NOT NULL,
    not_after_unix_ms   INTEGER NOT NULL,
    revoked_unix_ms     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX agent_certificates_agent ON agent_certificates (agent);
