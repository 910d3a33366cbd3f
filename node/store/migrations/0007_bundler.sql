-- The bundler's state, shared by every node; one bundler key per store. The pool is the
-- durable copy of the bundler key's leader's mempool (an op is acknowledged once it is here);
-- mined ops are indexed by every node, idempotently; bundles are recorded (nonce → ops) before
-- their broadcast; reputation counters are the leader's; submissions are ops a node that does
-- not lead hands to the leader, with the leader's verdict.
CREATE TABLE settled_bundler_pool (
    hash      BYTEA       PRIMARY KEY,
    entry     JSONB       NOT NULL,
    added_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE settled_bundler_mined (
    hash        BYTEA PRIMARY KEY,
    block_hash  BYTEA NOT NULL,
    mined       JSONB NOT NULL
);
CREATE INDEX settled_bundler_mined_by_block ON settled_bundler_mined (block_hash);

CREATE TABLE settled_bundler_sent (
    nonce  BIGINT PRIMARY KEY CHECK (nonce >= 0),
    ops    JSONB  NOT NULL
);

CREATE TABLE settled_bundler_reputation (
    entry_point   SMALLINT NOT NULL,
    address       BYTEA    NOT NULL,
    ops_seen      BIGINT   NOT NULL,
    ops_included  BIGINT   NOT NULL,
    PRIMARY KEY (entry_point, address)
);

CREATE TABLE settled_bundler_submissions (
    id           BIGSERIAL   PRIMARY KEY,
    entry_point  BYTEA       NOT NULL,
    op           JSONB       NOT NULL,
    verdict      JSONB,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settled_bundler_submissions_waiting ON settled_bundler_submissions (id)
    WHERE verdict IS NULL;
