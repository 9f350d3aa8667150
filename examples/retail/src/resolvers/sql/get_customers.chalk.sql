-- Customers, every row each run.
-- source: warehouse
-- resolves: Customer
SELECT
    customer_id AS id,
    segment
FROM
    "SALES.CUSTOMERS"
