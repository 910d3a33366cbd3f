-- Billing calls under their idempotency keys: claimed by a node's process (queued for the
-- signer's leader when that node does not lead; refused when the leader cannot sign it), then
-- sent (the raw transaction, committed with its intent before the broadcast), then done.
CREATE TABLE settled_calls (
    id           BYTEA       PRIMARY KEY,
    params       BYTEA       NOT NULL,
    state        TEXT        NOT NULL CHECK (state IN ('claimed', 'queued', 'refused', 'sent', 'done')),
    owner        TEXT,
    transaction  BYTEA,
    raw          BYTEA,
    receipt      JSONB,
    request      JSONB,
    reason       TEXT,
    queued_at    TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settled_calls_queued ON settled_calls (queued_at) WHERE state = 'queued';

-- Send intents: one payload per (signer, nonce), committed under the signer's lease epoch
-- before the broadcast; a fee bump adds a hash and replaces the raw transaction.
CREATE TABLE settled_intents (
    signer      BYTEA       NOT NULL,
    nonce       BIGINT      NOT NULL CHECK (nonce >= 0),
    carries     TEXT        NOT NULL,
    raw         BYTEA       NOT NULL,
    hashes      BYTEA[]     NOT NULL,
    epoch       BIGINT      NOT NULL,
    finished    BOOLEAN     NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (signer, nonce)
);
CREATE INDEX settled_intents_unfinished ON settled_intents (signer, nonce) WHERE NOT finished;
