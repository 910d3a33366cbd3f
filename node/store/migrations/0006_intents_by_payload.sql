-- A new leader looks up whether the key's previous holder signed a payload already (a
-- settlement commit it is about to send): by signer and what the intent carries.
CREATE INDEX settled_intents_carries ON settled_intents (signer, carries, nonce);
