-- get users from snowflake
-- source: sf
-- resolves: User
SELECT
    user_id as id,
    name
FROM
    "ML.USERS"
