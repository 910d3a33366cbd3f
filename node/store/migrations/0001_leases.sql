-- One writer per role: the lease row names its holder and an epoch that rises on every
-- takeover; leader writes check both in their own transaction (fencing).
CREATE TABLE settled_leases (
    name        TEXT        PRIMARY KEY,
    holder      TEXT        NOT NULL,
    epoch       BIGINT      NOT NULL CHECK (epoch > 0),
    expires_at  TIMESTAMPTZ NOT NULL
);
