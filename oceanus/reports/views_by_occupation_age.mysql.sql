-- views_by_occupation_age: EC page views per occupation and age band.
--
-- Who looks at the shop: every ecview event (exactly once: the _dedup view), counted by the
-- viewer's occupation and age band. The member record wins (users_latest, imported from the shop
-- database); a viewer it does not know is counted with the occupation and age the event carried;
-- neither: "unknown". Age bands: 0-19, 20-29, 30-39, 40-49, 50-59, 60+, unknown.
--
-- Reads: ecview_dedup (user_id, age, occupation); users_latest (id, age, occupation), joined on
-- the text of users.id = ecview.user_id.
-- Columns: occupation, age_band, views (events), viewers (distinct user_id).
WITH views AS (
    SELECT e.user_id,
           COALESCE(NULLIF(u.occupation, ''), NULLIF(e.occupation, ''), 'unknown') COLLATE utf8mb4_bin AS occ,
           COALESCE(u.age, e.age) AS age
    FROM ecview_dedup AS e
    LEFT JOIN users_latest AS u ON CAST(u.id AS CHAR) COLLATE utf8mb4_bin = e.user_id
)
SELECT occ AS occupation,
       CASE
           WHEN age IS NULL THEN 'unknown'
           WHEN age < 20 THEN '0-19'
           WHEN age < 30 THEN '20-29'
           WHEN age < 40 THEN '30-39'
           WHEN age < 50 THEN '40-49'
           WHEN age < 60 THEN '50-59'
           ELSE '60+'
       END AS age_band,
       COUNT(*) AS views,
       COUNT(DISTINCT user_id) AS viewers
FROM views
GROUP BY 1, 2
ORDER BY 1, 2
