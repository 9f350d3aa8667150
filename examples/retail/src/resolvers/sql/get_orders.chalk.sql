-- Orders from the warehouse, incrementally; late rows within an hour are picked up.
-- source: warehouse
-- resolves: Order
-- incremental:
--   mode: row
--   lookback_period: 60m
--   incremental_column: ts
SELECT
    order_id AS id,
    customer_id,
    store_id,
    amount,
    quantity,
    channel,
    is_gift,
    ts
FROM
    "SALES.ORDERS"
