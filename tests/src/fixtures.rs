//! Test data: a generated dataset that touches the types and objects a dump must carry
//! faithfully, a large table that makes a backup take seconds, and the Chinook sample
//! database when the shared datasets are present.

use std::path::PathBuf;

use crate::PgCluster;

/// SQL that builds the rich fixture in an empty database: unicode text (emoji, CJK,
/// combining marks, right-to-left scripts), high-precision numerics, timestamptz, json and
/// jsonb, arrays, bytea with zero bytes, an enum, a domain with a CHECK, a range-partitioned
/// table, a view and a materialized view, sequences (one advanced by hand), serial and
/// identity columns, a trigger with its plpgsql function, foreign keys, NULLs, TOASTed values,
/// a schema and a table whose names need quoting, and an empty table.
pub const RICH_FIXTURE_SQL: &str = r#"
BEGIN;

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ecstatic 😀');
CREATE DOMAIN positive_qty AS integer CHECK (VALUE > 0);

CREATE TABLE customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    note        text,
    mood        mood,
    balance     numeric(40, 20),
    exact       numeric,
    created_at  timestamptz NOT NULL,
    birthday    date,
    tags        text[],
    lucky       int[],
    profile     json,
    settings    jsonb,
    avatar      bytea,
    qty         positive_qty,
    ratio       double precision,
    active      boolean,
    referrer_id integer REFERENCES customers (id)
);

CREATE TABLE customer_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id integer NOT NULL,
    op          text NOT NULL,
    name_then   text
);

CREATE FUNCTION log_customer_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO customer_audit (customer_id, op, name_then) VALUES (NEW.id, TG_OP, NEW.name);
    RETURN NEW;
END
$fn$;

CREATE TRIGGER customers_audit AFTER INSERT OR UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION log_customer_change();

INSERT INTO customers (name, note, mood, balance, exact, created_at, birthday, tags, lucky,
                       profile, settings, avatar, qty, ratio, active, referrer_id)
SELECT
    (ARRAY['Zoë 😀🎉 👩‍👩‍👧‍👦', '数据库备份 テスト 한국어', 'e' || U&'\0301' || ' a' || U&'\0308' || ' ñ',
           'שלום עולם مرحبا بالعالم', E'tab\there\nnew line \\ back"slash''quote'])[1 + g % 5]
        || ' #' || g,
    CASE WHEN g % 7 = 0 THEN NULL ELSE repeat('note ' || g || ' ', 1 + g % 4) END,
    CASE WHEN g % 11 = 0 THEN NULL ELSE (ARRAY['sad', 'ok', 'happy', 'ecstatic 😀'])[1 + g % 4]::mood END,
    (g * 1234567.891011121314151617181920)::numeric(40, 20) / 7,
    CASE WHEN g % 13 = 0 THEN 'NaN'::numeric ELSE (10::numeric ^ (g % 40)) + 1 / (g::numeric * 3) END,
    timestamptz '2001-02-03 04:05:06.789012+00' + g * interval '1 day 3 hours 7 minutes 11.123456 seconds',
    CASE WHEN g % 9 = 0 THEN NULL ELSE date '1950-01-01' + g * 7 END,
    CASE WHEN g % 6 = 0 THEN NULL ELSE ARRAY['tag' || g % 10, 'ü' || g, NULL, 'with,comma {brace}'] END,
    ARRAY[g, -g, g * g, 2147483647],
    json_build_object('id', g, 'name', 'json ' || g, 'nested', json_build_object('a', ARRAY[1, 2, g]), 'nothing', NULL),
    jsonb_build_object('id', g, 'flags', jsonb_build_array(g % 2 = 0, 'ß', 1.5e300), 'emoji', '🦀'),
    CASE WHEN g % 8 = 0 THEN NULL ELSE decode(md5(g::text) || '00ff0000' || lpad(to_hex(g), 8, '0'), 'hex') END,
    CASE WHEN g % 10 = 0 THEN NULL ELSE 1 + g % 100 END,
    CASE WHEN g % 17 = 0 THEN 'Infinity'::float8 ELSE g / 3.0::float8 END,
    CASE WHEN g % 5 = 0 THEN NULL ELSE g % 2 = 0 END,
    CASE WHEN g > 10 AND g % 3 = 0 THEN g - 10 ELSE NULL END
FROM generate_series(1, 3000) AS g;

-- A few values big enough to be TOASTed.
UPDATE customers SET note = repeat(md5(id::text) || ' 長い ', 4000) WHERE id IN (5, 500, 2500);

CREATE TABLE products (
    sku        text PRIMARY KEY,
    title      text NOT NULL UNIQUE,
    price      numeric(12, 2) NOT NULL CHECK (price >= 0),
    dims       real[],
    added      timestamp
);
INSERT INTO products
SELECT 'SKU-' || lpad(g::text, 5, '0'), 'Product ' || g || ' «' || chr(19968 + g) || '»',
       (g * 3.17)::numeric(12, 2), ARRAY[g * 0.5, g * 0.25]::real[],
       timestamp '2020-01-01' + g * interval '17 minutes'
FROM generate_series(1, 500) AS g;

CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    sku         text REFERENCES products (sku),
    quantity    positive_qty NOT NULL,
    placed_at   timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00',
    memo        varchar(200)
);
INSERT INTO orders (customer_id, sku, quantity, placed_at, memo)
SELECT 1 + g % 3000, 'SKU-' || lpad((1 + g % 500)::text, 5, '0'), 1 + g % 9,
       timestamptz '2023-06-01 12:00:00+02' + g * interval '41 minutes',
       CASE WHEN g % 4 = 0 THEN NULL ELSE 'memo ' || g || ' ☃' END
FROM generate_series(1, 6000) AS g;

CREATE TABLE measurements (
    id       bigint GENERATED BY DEFAULT AS IDENTITY,
    taken_on date NOT NULL,
    sensor   text NOT NULL,
    reading  numeric(10, 4),
    PRIMARY KEY (id, taken_on)
) PARTITION BY RANGE (taken_on);
CREATE TABLE measurements_2023 PARTITION OF measurements FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measurements_other PARTITION OF measurements DEFAULT;
INSERT INTO measurements (taken_on, sensor, reading)
SELECT date '2022-10-01' + (g % 1300), 'sensor-' || (g % 17), (g % 10000) / 3.0
FROM generate_series(1, 4000) AS g;

CREATE SEQUENCE invoice_no START 1000 INCREMENT 7;
SELECT setval('invoice_no', 48213);
SELECT nextval('invoice_no');

CREATE SCHEMA "Mixed Case";
CREATE TABLE "Mixed Case"."Odd ""Name"" ü" (
    "Key Column" integer PRIMARY KEY,
    "select"     text,
    "ünï"        interval,
    "range"      int4range,
    "when"       tstzrange
);
INSERT INTO "Mixed Case"."Odd ""Name"" ü"
SELECT g, 'reserved word ' || g, g * interval '1 hour 1 second', int4range(g, g + 10),
       tstzrange(timestamptz '2020-01-01 00:00+00' + g * interval '1 day', NULL)
FROM generate_series(1, 200) AS g;

CREATE TABLE empty_table (id integer PRIMARY KEY, v text);

CREATE VIEW happy_customers AS
    SELECT id, name, balance FROM customers WHERE mood = 'happy';

CREATE MATERIALIZED VIEW sales_by_customer AS
    SELECT c.id AS customer_id, count(o.id) AS order_count, coalesce(sum(o.quantity), 0) AS items
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.id
    GROUP BY c.id;
CREATE UNIQUE INDEX sales_by_customer_pk ON sales_by_customer (customer_id);
CREATE INDEX customers_name_idx ON customers (name);

-- The trigger fires on updates too; its audit rows are part of the data.
UPDATE customers SET qty = 42 WHERE id % 250 = 0;

COMMIT;
"#;

/// Loads [`RICH_FIXTURE_SQL`] into `db`.
pub fn load_rich_fixture(cluster: &PgCluster, db: &str) {
    cluster.psql_script(db, RICH_FIXTURE_SQL);
}

/// Creates `big_table` with `rows` rows of md5 text (about 130 bytes of dump per row) in `db`.
/// An unlogged table, because its only purpose is to make a dump take time.
pub fn large_table(cluster: &PgCluster, db: &str, rows: u64) {
    cluster.psql_script(
        db,
        &format!(
            "CREATE UNLOGGED TABLE big_table (id bigint, a text, b text, c text);\n\
             INSERT INTO big_table SELECT g, md5(g::text), md5((g * 7)::text), \
             md5(random()::text) || md5(random()::text) FROM generate_series(1, {rows}) AS g;\n"
        ),
    );
}

/// Returns the path of the Chinook script, when the shared datasets are present.
pub fn chinook_sql() -> Option<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/chinook/chinook.sql");
    path.is_file().then_some(path)
}

/// Says on the real stderr (not the test harness's captured one, which shows only for
/// failures) that a test skipped part of its work, so a CI log shows it.
pub fn say_skipped(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipping: {why}");
}

/// Loads Chinook into database `chinook` of `cluster` (the script creates it). Returns false
/// (after saying so) when the dataset is not present.
pub fn load_chinook(cluster: &PgCluster) -> bool {
    match chinook_sql() {
        Some(path) => {
            cluster.psql_file("postgres", &path);
            true
        }
        None => {
            say_skipped("../shared/datasets not present");
            false
        }
    }
}
