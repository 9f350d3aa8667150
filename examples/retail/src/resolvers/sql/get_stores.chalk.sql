-- Store versions, every row each run.
-- source: warehouse
-- resolves: Store
SELECT
    store_id AS id,
    region,
    tier,
    updated_at
FROM
    "SALES.STORES"
