CREATE TABLE reviews (
    id          bigserial PRIMARY KEY,
    product_id  integer NOT NULL REFERENCES products (id),
    customer_id bigint NOT NULL REFERENCES customers (id),
    stars       smallint NOT NULL CHECK (stars BETWEEN 1 AND 5),
    body        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
