-- Billing calls under their idempotency keys: claimed by a node's process, then sent (the raw
-- transaction, committed with its intent before the broadcast), then done (the answer).
CREATE TABLE settled_calls (
    id           BYTEA       PRIMARY KEY,
    params       BYTEA       NOT NULL,
    state        TEXT        NOT NULL CHECK (state IN ('claimed', 'sent', 'done')),
    owner        TEXT,
    transaction  BYTEA,
    raw          BYTEA,
    receipt      JSONB,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

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
