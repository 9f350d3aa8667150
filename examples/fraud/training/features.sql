-- The fraud model's features, computed in DuckDB with Slate's point-in-time semantics: for a
-- transaction at `now`, a window `w` covers the user's other ingested transactions with
-- now - w <= ts < now (the transaction itself and same-time rows excluded).
WITH t AS (
    SELECT transaction_id AS id, user_id, merchant_id, amount, ts, is_fraud
    FROM read_parquet('{warehouse}/ML.TRANSACTIONS/*.parquet')
    WHERE category <> 'pending'
),
pairs AS (
    SELECT t.id, h.ts AS hts, h.merchant_id AS hm, t.ts AS now
    FROM t JOIN t AS h ON h.user_id = t.user_id AND h.ts < t.ts
)
SELECT
    t.id,
    t.amount,
    epoch_us(t.ts) - epoch_us(max(p.hts)) AS since_us,
    count(p.hts) FILTER (WHERE p.hts >= p.now - INTERVAL 1 DAY) AS n1,
    count(p.hts) FILTER (WHERE p.hts >= p.now - INTERVAL 10 DAY) AS n10,
    count(p.hts) FILTER (WHERE p.hts >= p.now - INTERVAL 30 DAY) AS n30,
    count(DISTINCT p.hm) FILTER (WHERE p.hts >= p.now - INTERVAL 1 DAY) AS d1,
    count(DISTINCT p.hm) FILTER (WHERE p.hts >= p.now - INTERVAL 10 DAY) AS d10,
    count(DISTINCT p.hm) FILTER (WHERE p.hts >= p.now - INTERVAL 30 DAY) AS d30,
    t.is_fraud,
    epoch_us(t.ts) AS ts_us
FROM t LEFT JOIN pairs p ON p.id = t.id
GROUP BY t.id, t.amount, t.ts, t.is_fraud
ORDER BY t.id
