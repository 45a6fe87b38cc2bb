-- item_conversion_7d: of the members who viewed an item, how many ordered it within 7 days.
--
-- An item view is an ecview event whose screen is /items/<item id> (the shop's item pages); its
-- time is viewed_at (the shop's clock, stored in UTC), else received_at. A (member, item) pair
-- converted when an order of that member that is not cancelled holds the item and was placed
-- between a view of it and 7 days after that view (both ends included).
--
-- Reads: ecview_dedup (user_id, screen, viewed_at, received_at); orders_latest (id, user_id,
-- status, ordered_at: when the order was placed, UTC); order_items_latest (order_id, item_id);
-- items_latest (id, name).
-- Columns: item_id, name, viewers (distinct members who viewed it), buyers_7d (of them, ordered it
-- within 7 days of a view), conversion (buyers_7d / viewers, 4 decimals). Best converting first.
WITH item_views AS (
    SELECT e.user_id,
           CAST(SUBSTRING(REGEXP_SUBSTR(e.screen COLLATE utf8mb4_bin, '^/items/[0-9]+'), 8) AS SIGNED) AS item_id,
           COALESCE(e.viewed_at, e.received_at) AS seen_at
    FROM ecview_dedup AS e
    WHERE e.screen COLLATE utf8mb4_bin REGEXP '^/items/[0-9]+'
),
purchases AS (
    SELECT CAST(o.user_id AS CHAR) COLLATE utf8mb4_bin AS user_id, oi.item_id, o.ordered_at
    FROM orders_latest AS o
    JOIN order_items_latest AS oi ON oi.order_id = o.id
    WHERE NOT (o.status <=> 'cancelled')
),
pairs AS (
    SELECT v.user_id, v.item_id, MAX(CASE WHEN p.user_id IS NULL THEN 0 ELSE 1 END) AS converted
    FROM item_views AS v
    LEFT JOIN purchases AS p
        ON p.user_id = v.user_id AND p.item_id = v.item_id
        AND p.ordered_at >= v.seen_at AND p.ordered_at <= v.seen_at + INTERVAL 7 DAY
    GROUP BY v.user_id, v.item_id
)
SELECT pr.item_id,
       i.name,
       COUNT(*) AS viewers,
       SUM(pr.converted) AS buyers_7d,
       ROUND(SUM(pr.converted) / COUNT(*), 4) AS conversion
FROM pairs AS pr
LEFT JOIN items_latest AS i ON i.id = pr.item_id
GROUP BY pr.item_id, i.name
ORDER BY conversion DESC, viewers DESC, pr.item_id
