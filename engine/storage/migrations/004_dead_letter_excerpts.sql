-- A dead letter keeps at most intake.dead_letter_bytes (64 KiB) of its raw payload, with
-- the size and SHA-256 of the whole payload, so one oversized input cannot park hundreds
-- of megabytes in PostgreSQL for the retention period. Rows from before keep their digest
-- and size, and are cut to the default 64 KiB.
ALTER TABLE dead_letters ADD COLUMN raw_size bigint, ADD COLUMN raw_sha256 text;
UPDATE dead_letters SET raw_size = length(raw), raw_sha256 = encode(sha256(raw), 'hex')
WHERE raw IS NOT NULL;
UPDATE dead_letters SET raw = substring(raw FROM 1 FOR 65536) WHERE length(raw) > 65536;
