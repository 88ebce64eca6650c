-- Customers earn a loyalty tier; everyone starts at bronze.
ALTER TABLE customers ADD COLUMN loyalty_tier text NOT NULL DEFAULT 'bronze'
    CHECK (loyalty_tier IN ('bronze', 'silver', 'gold'));
UPDATE customers SET loyalty_tier = 'gold'
WHERE id IN (SELECT customer_id FROM orders GROUP BY customer_id HAVING sum(total) > 500);
