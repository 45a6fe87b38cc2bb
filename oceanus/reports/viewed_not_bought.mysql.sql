-- viewed_not_bought: the items most viewed by members who never bought them.
--
-- An item view is an ecview event whose screen is /items/<item id>. A viewer did not buy the item
-- when no order of theirs that is not cancelled holds it, at any time. Items every viewer bought
-- are left out. The 20 items with the most such viewers first.
--
-- Reads: ecview_dedup (user_id, screen); orders_latest (id, user_id, status); order_items_latest
-- (order_id, item_id); items_latest (id, name).
-- Columns: item_id, name, views (item views), viewers (distinct members), not_bought (viewers who
-- never ordered it).
WITH item_views AS (
    SELECT e.user_id,
           CAST(SUBSTRING(REGEXP_SUBSTR(e.screen COLLATE utf8mb4_bin, '^/items/[0-9]+'), 8) AS SIGNED) AS item_id
    FROM ecview_dedup AS e
    WHERE e.screen COLLATE utf8mb4_bin REGEXP '^/items/[0-9]+'
),
bought AS (
    SELECT DISTINCT CAST(o.user_id AS CHAR) COLLATE utf8mb4_bin AS user_id, oi.item_id
    FROM orders_latest AS o
    JOIN order_items_latest AS oi ON oi.order_id = o.id
    WHERE NOT (o.status <=> 'cancelled')
)
SELECT v.item_id,
       i.name,
       COUNT(*) AS views,
       COUNT(DISTINCT v.user_id) AS viewers,
       COUNT(DISTINCT CASE WHEN b.user_id IS NULL THEN v.user_id END) AS not_bought
FROM item_views AS v
LEFT JOIN bought AS b ON b.user_id = v.user_id AND b.item_id = v.item_id
LEFT JOIN items_latest AS i ON i.id = v.item_id
GROUP BY v.item_id, i.name
HAVING COUNT(DISTINCT CASE WHEN b.user_id IS NULL THEN v.user_id END) > 0
ORDER BY not_bought DESC, views DESC, v.item_id
LIMIT 20
