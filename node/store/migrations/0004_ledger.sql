-- The paymaster's sponsorship ledger shared by every node: each reservation (its JSON, with the
-- columns the ledger looks it up by), usage per cap slot (locked in a fixed order by every
-- transaction that changes it, so concurrent reservations on any node see each other and no two
-- transactions deadlock), and the all-time totals.
CREATE SEQUENCE settled_reservation_ids START 1;
CREATE TABLE settled_reservations (
    id            BIGINT  PRIMARY KEY,
    body          JSONB   NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('open', 'settled', 'released')),
    user_op_hash  BYTEA   UNIQUE,
    valid_until   BIGINT  NOT NULL,
    created_at    BIGINT  NOT NULL,
    settled_in    BYTEA
);
CREATE INDEX settled_reservations_open ON settled_reservations (valid_until) WHERE state = 'open';
CREATE INDEX settled_reservations_finished ON settled_reservations (created_at) WHERE state <> 'open';
CREATE INDEX settled_reservations_block ON settled_reservations (settled_in) WHERE settled_in IS NOT NULL;

CREATE TABLE settled_usage (
    scope        TEXT    NOT NULL,
    period_secs  BIGINT  NOT NULL,
    idx          BIGINT  NOT NULL,
    ops          BIGINT  NOT NULL CHECK (ops >= 0),
    wei          TEXT    NOT NULL,
    PRIMARY KEY (scope, period_secs, idx)
);

CREATE TABLE settled_ledger_totals (
    one   BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    body  JSONB   NOT NULL
);
INSERT INTO settled_ledger_totals (body)
    VALUES ('{"settledOps": 0, "settledWei": "0x0", "unreservedOps": 0}');
