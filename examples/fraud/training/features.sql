-- The fraud model's features, computed in DuckDB with Slate's point-in-time semantics: for a
-- transaction at `now`, a window `w` covers the user's other ingested transactions with
-- now - w <= ts < now. `RANGE ... CURRENT ROW EXCLUDE GROUP` drops the row itself and every
-- transaction at the same instant.
WITH t AS (
    SELECT transaction_id AS id, user_id, merchant_id, amount, ts, is_fraud
    FROM read_parquet('{warehouse}/ML.TRANSACTIONS/*.parquet')
    WHERE category <> 'pending'
)
SELECT
    id,
    amount,
    epoch_us(ts) - epoch_us(max(ts) OVER w_all) AS since_us,
    count(*) OVER w1 AS n1,
    count(*) OVER w10 AS n10,
    count(*) OVER w30 AS n30,
    count(DISTINCT merchant_id) OVER w1 AS d1,
    count(DISTINCT merchant_id) OVER w10 AS d10,
    count(DISTINCT merchant_id) OVER w30 AS d30,
    is_fraud,
    epoch_us(ts) AS ts_us
FROM t
WINDOW
    w_all AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW EXCLUDE GROUP),
    w1 AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 1 DAY PRECEDING AND CURRENT ROW EXCLUDE GROUP),
    w10 AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 10 DAY PRECEDING AND CURRENT ROW EXCLUDE GROUP),
    w30 AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL 30 DAY PRECEDING AND CURRENT ROW EXCLUDE GROUP)
ORDER BY id
