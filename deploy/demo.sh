#!/usr/bin/env bash
# Starts a local Warden demo fleet and shows a backup and a restore end to end:
# two real PostgreSQL clusters, a coordinator on SQLite and two agents, all under .demo/ in
# the repository root. The fleet stays running afterwards so it can be explored.
#
#   ./deploy/demo.sh        build, (re)start the fleet, back up pg1/shop, restore it
#   ./deploy/demo.sh stop   stop every process the demo started and remove .demo/
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The coordinator's store path is relative to the repository root, like the README's.
cd "$ROOT"
DEMO="$ROOT/.demo"
BIN="$ROOT/target/debug"
WARDEN="$BIN/warden"
# How long the agents get to register with the coordinator.
ONLINE_TIMEOUT=30

if [[ -t 1 ]]; then
  BOLD=$'\033[1m' DIM=$'\033[2m' RESET=$'\033[0m'
else
  BOLD='' DIM='' RESET=''
fi

step() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
# Shows a command before running it, so the output reads like a terminal session.
show() {
  printf '%s$ %s%s\n' "$DIM" "$*" "$RESET"
  "$@"
}
SCRIPT=demo
# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"

record_pid() { echo "$1" >>"$DEMO/pids"; }

# Starts a program in the background, detached from this shell, logging to a file.
start_background() {
  local log=$1
  shift
  nohup "$@" >"$log" 2>&1 </dev/null &
  record_pid "$!"
  echo "$!"
}

stop_demo() {
  if [[ ! -d $DEMO ]]; then
    echo "no demo running (.demo/ does not exist)"
    return 0
  fi
  local pid dir
  if [[ -f $DEMO/pids ]]; then
    # Agents and coordinator get a moment to shut down gracefully, then are killed.
    local pids=()
    while read -r pid; do
      if [[ -n $pid ]]; then pids+=("$pid"); fi
    done <"$DEMO/pids"
    stop_pids "${pids[@]}"
  fi
  if [[ -f $DEMO/clusters ]]; then
    local pg_ctl
    pg_ctl="$(cat "$DEMO/pgbin" 2>/dev/null || true)/pg_ctl"
    while read -r dir; do
      [[ -z $dir || ! -d $dir ]] && continue
      if [[ -x $pg_ctl ]]; then
        as_postgres "$pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
      fi
      # Clusters placed in /tmp (see start_demo) are removed with the demo.
      case $dir in
        /tmp/warden-demo.*/pg[12]) rm -rf "$(dirname "$dir")" ;;
      esac
    done <"$DEMO/clusters"
  fi
  rm -rf "$DEMO"
  echo "demo stopped; .demo/ removed"
}

# Creates a cluster in DIR listening on 127.0.0.1:PORT with its socket in DIR.
start_cluster() {
  local dir=$1 port=$2
  echo "$dir" >>"$DEMO/clusters"
  start_cluster_in "$PGBIN" "$dir" "$port" "$DEMO/initdb-$(basename "$dir").log"
}

sql() {
  local port=$1 db=$2
  shift 2
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

load_shop() {
  sql "$PG1_PORT" postgres -c "CREATE DATABASE shop"
  sql "$PG1_PORT" shop <<'SQL'
CREATE TABLE customers (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL UNIQUE,
    country    text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE products (
    id         serial PRIMARY KEY,
    name       text NOT NULL,
    price      numeric(10, 2) NOT NULL CHECK (price >= 0),
    attributes json NOT NULL
);
CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    product_id  integer NOT NULL REFERENCES products (id),
    quantity    integer NOT NULL,
    total       numeric(12, 2) NOT NULL,
    ordered_at  timestamptz NOT NULL,
    note        text
);
INSERT INTO customers (name, email, country, created_at)
SELECT (ARRAY['Zoë', 'José', 'Søren', 'Łukasz', '美咲', 'Ana'])[1 + i % 6] || ' Nº' || i,
       'customer' || i || '@example.com',
       (ARRAY['DE', 'ES', 'DK', 'PL', 'JP', 'PT'])[1 + i % 6],
       timestamptz '2026-01-01 09:00:00+00' + i * interval '7 hours'
FROM generate_series(1, 300) AS i;
INSERT INTO products (name, price, attributes)
SELECT (ARRAY['Crème brûlée set', 'Müsli', 'Smørrebrød board', 'Ñandú plush', '抹茶 tea'])[1 + i % 5] || ' #' || i,
       round((3 + i * 1.37)::numeric, 2),
       json_build_object('colour', (ARRAY['red', 'grün', 'bleu'])[1 + i % 3],
                         'tags', json_build_array('demo', 'size-' || (i % 4)),
                         'stock', i * 3)
FROM generate_series(1, 50) AS i;
INSERT INTO orders (customer_id, product_id, quantity, total, ordered_at, note)
SELECT 1 + i % 300, 1 + i % 50, 1 + i % 4, round(((1 + i % 4) * (3 + (1 + i % 50) * 1.37))::numeric, 2),
       timestamptz '2026-06-01 12:00:00+00' + i * interval '95 minutes',
       CASE WHEN i % 7 = 0 THEN 'gift wrap, s''il vous plaît 🎁' END
FROM generate_series(1, 600) AS i;
ANALYZE;
SQL
}

load_inventory() {
  sql "$PG2_PORT" postgres -c "CREATE DATABASE inventory"
  sql "$PG2_PORT" inventory <<'SQL'
CREATE TABLE warehouses (
    id   serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    city text NOT NULL
);
CREATE TABLE stock_items (
    id           bigserial PRIMARY KEY,
    warehouse_id integer NOT NULL REFERENCES warehouses (id),
    sku          text NOT NULL,
    quantity     integer NOT NULL,
    unit_cost    numeric(10, 3) NOT NULL,
    details      jsonb NOT NULL,
    counted_at   timestamptz NOT NULL,
    UNIQUE (warehouse_id, sku)
);
INSERT INTO warehouses (name, city) VALUES
    ('Nord', 'Hamburg'), ('Süd', 'München'), ('Øst', 'København'), ('東', 'Tōkyō');
INSERT INTO stock_items (warehouse_id, sku, quantity, unit_cost, details, counted_at)
SELECT 1 + i % 4, 'SKU-' || lpad(i::text, 5, '0'), (i * 17) % 500, round((0.5 + i * 0.113)::numeric, 3),
       jsonb_build_object('fragile', i % 5 = 0, 'label', 'Étiquette ' || i),
       timestamptz '2026-03-01 08:00:00+00' + i * interval '1 hour'
FROM generate_series(1, 400) AS i;
ANALYZE;
SQL
}

write_agent_config() {
  local name=$1 database=$2 port=$3
  # Agent configs hold database credentials: only their owner may read them.
  (umask 077 && cat >"$DEMO/agent-$name.toml") <<EOF
# Demo agent $name: serves $name/$database from the cluster on port $port.
name = "$name"
coordinator = "$COORDINATOR_URL"
# Its key and certificate (warden-agent enroll), and the coordinator's CA.
tls_dir = "$DEMO/tls-$name"
repository = "file://$DEMO/repo"
labels = { env = "demo" }
pg_bindir = "$PGBIN"
staging_dir = "$DEMO/staging-$name"

[[databases]]
name = "$database"
url = "postgres://postgres@127.0.0.1:$port/$database"
labels = { env = "demo" }

# Backups are sealed with this key (age); both agents hold it, so either restores them.
[encryption]
key_files = ["$DEMO/backup.key"]
EOF
}

# Prints how many of the demo's agents the coordinator reports online.
agents_online() {
  { "$WARDEN" --json agents 2>/dev/null || true; } | python3 -c '
import json, sys
try:
    agents = json.load(sys.stdin)
except ValueError:  # the coordinator is not answering yet
    agents = []
print(sum(1 for a in agents if a.get("online") and a.get("name") in ("pg1", "pg2")))
'
}

# Prints the end of each demo log, without backtrace frames, after a failed start.
show_logs() {
  local log
  for log in "$DEMO"/coordinator.log "$DEMO"/agent-pg1.log "$DEMO"/agent-pg2.log; do
    [[ -f $log ]] || continue
    echo "--- $log" >&2
    grep -Ev '^ +([0-9]+: |at )' "$log" | tail -n 15 >&2 || true
  done
}

wait_for_agents() {
  local deadline=$((SECONDS + ONLINE_TIMEOUT)) online=0 pid
  while ((SECONDS < deadline)); do
    while read -r pid; do
      kill -0 "$pid" 2>/dev/null || {
        show_logs
        die "a demo process (pid $pid) exited during startup: see the logs above and in $DEMO"
      }
    done <"$DEMO/pids"
    online=$(agents_online)
    [[ $online == 2 ]] && return 0
    sleep 0.5
  done
  show_logs
  die "only $online of 2 agents came online within ${ONLINE_TIMEOUT}s: see the logs above and in $DEMO, then ./deploy/demo.sh stop"
}

# Prints the artifact the newest backup of pg1/shop produced (orders come newest first).
newest_artifact() {
  "$WARDEN" --json orders --database pg1/shop --limit 20 | python3 -c '
import json, sys
backups = [o for o in json.load(sys.stdin) if o["kind"] == "backup" and o.get("artifact_id")]
print(backups[0]["artifact_id"] if backups else "")
'
}

start_demo() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust from https://rustup.rs"
  command -v python3 >/dev/null 2>&1 || die "python3 not found: the demo uses it to pick free ports and read JSON"
  PGBIN=$(need_pg_bindir)
  PSQL=$(pg_tool "$PGBIN" psql)
  need_postgres_user

  if [[ -d $DEMO ]]; then
    step "Stopping the previous demo"
    stop_demo
  fi

  step "Building Warden"
  (cd "$ROOT" && cargo build --workspace --bins)
  for bin in warden warden-coordinator warden-agent; do
    [[ -x $BIN/$bin ]] || die "$BIN/$bin was not built: check the cargo output above"
  done

  mkdir -p "$DEMO/repo" "$DEMO/staging-pg1" "$DEMO/staging-pg2"
  : >"$DEMO/pids"
  : >"$DEMO/clusters"
  echo "$PGBIN" >"$DEMO/pgbin"
  trap on_failed_start EXIT

  read -r PG1_PORT PG2_PORT COORDINATOR_PORT HTTP_PORT <<<"$(free_ports 4)"
  COORDINATOR_URL="https://127.0.0.1:$COORDINATOR_PORT"
  export WARDEN_COORDINATOR=$COORDINATOR_URL
  export WARDEN_CA_CERT="$DEMO/tls/ca.pem"
  export WARDEN_TOKEN_FILE="$DEMO/admin-token"

  # As root the clusters belong to postgres, which must be able to reach their directory;
  # when the repository sits somewhere it cannot (a home directory), they go to /tmp.
  local clusters_root="$DEMO"
  if is_root && ! runuser -u postgres -- test -x "$DEMO"; then
    clusters_root=$(mktemp -d /tmp/warden-demo.XXXXXX)
    chmod 755 "$clusters_root"
  fi

  step "Starting PostgreSQL ($PGBIN) on ports $PG1_PORT and $PG2_PORT"
  start_cluster "$clusters_root/pg1" "$PG1_PORT"
  start_cluster "$clusters_root/pg2" "$PG2_PORT"

  step "Loading sample data: shop on pg1, inventory on pg2"
  load_shop
  load_inventory

  step "Securing the coordinator: its own CA, a TLS certificate, an admin token (in $DEMO)"
  local admin_token
  admin_token=$(init_coordinator_security "$BIN" "$DEMO/tls" sqlite://.demo/warden.db demo-admin) \
    || die "cannot create the coordinator's CA and admin token"
  (umask 077 && printf '%s\n' "$admin_token" >"$WARDEN_TOKEN_FILE")

  step "Starting the coordinator on $COORDINATOR_URL (mTLS) and enrolling two agents"
  start_background "$DEMO/coordinator.log" \
    "$BIN/warden-coordinator" --listen "127.0.0.1:$COORDINATOR_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
    --store sqlite://.demo/warden.db --tls-dir "$DEMO/tls" --health-interval 5s >/dev/null
  wait_for_coordinator "$WARDEN" "$(tail -n 1 "$DEMO/pids")" "$ONLINE_TIMEOUT"
  local key_id
  key_id=$("$BIN/warden-agent" key generate "$DEMO/backup.key" 2>/dev/null) \
    || die "cannot generate the backup encryption key"
  echo "  backups are sealed with key $key_id ($DEMO/backup.key)"
  write_agent_config pg1 shop "$PG1_PORT"
  write_agent_config pg2 inventory "$PG2_PORT"
  local agent
  for agent in pg1 pg2; do
    enroll_agent "$BIN" "$DEMO/agent-$agent.toml" "$agent" "$WARDEN_CA_CERT" \
      || die "cannot enroll agent $agent: see the message above"
  done
  start_background "$DEMO/agent-pg1.log" "$BIN/warden-agent" --config "$DEMO/agent-pg1.toml" >/dev/null
  start_background "$DEMO/agent-pg2.log" "$BIN/warden-agent" --config "$DEMO/agent-pg2.toml" >/dev/null
  wait_for_agents

  cat >"$DEMO/env" <<EOF
export WARDEN_COORDINATOR=$COORDINATOR_URL
export WARDEN_CA_CERT=$WARDEN_CA_CERT
export WARDEN_TOKEN_FILE=$WARDEN_TOKEN_FILE
export PATH="$BIN:\$PATH"
EOF

  step "The fleet"
  show warden agents
  show warden databases

  step "Backing up pg1/shop"
  show warden backup pg1/shop --wait
  local artifact
  artifact=$(newest_artifact)
  [[ -n $artifact ]] || die "the backup of pg1/shop produced no artifact: see warden orders and $DEMO/agent-pg1.log"
  show warden artifacts

  step "Restoring artifact $artifact as shop_restored"
  show warden restore "$artifact" --new-name shop_restored --wait

  step "Comparing row counts of shop and shop_restored"
  local db
  for db in shop shop_restored; do
    printf '%s$ psql -h 127.0.0.1 -p %s -U postgres -d %s -c "SELECT count(*) ..."%s\n' \
      "$DIM" "$PG1_PORT" "$db" "$RESET"
    sql "$PG1_PORT" "$db" -c "SELECT current_database() AS database,
                                     (SELECT count(*) FROM customers) AS customers,
                                     (SELECT count(*) FROM products) AS products,
                                     (SELECT count(*) FROM orders) AS orders"
  done

  step "Applying the fleet policy in deploy/fleet.toml (windows, schedules, retention, limits)"
  show warden apply -f "$ROOT/deploy/fleet.toml"
  show warden windows
  show warden windows next pg1/shop

  step "Drilling the newest backup of pg1/shop: restore into a scratch database, verify, time, drop"
  show warden drill pg1/shop --wait

  local migrations="$ROOT/deploy/migrations/shop"
  step "Migrations of pg1/shop in deploy/migrations/shop: what the database has recorded"
  show warden migrate status pg1/shop --dir "$migrations"

  step "Migrating pg1/shop: outside demo-nightly a migration waits for the window (--no-wait refuses: exit 2)"
  show warden migrate pg1/shop --dir "$migrations" --no-wait || true

  step "Breaking glass to migrate now: verified pre-migration backup, apply, post-checks (audited)"
  show warden migrate pg1/shop --dir "$migrations" --wait \
    --emergency --reason "demo: apply the shop migrations outside the nightly window"
  show warden migrate status pg1/shop --dir "$migrations"

  step "Recovery targets (pg2/inventory has no backup yet, so it breaches its RPO: exit 2)"
  show warden rto || true
  show warden status

  step "Roles: a viewer's token reads the fleet but may not restore; the refusal is audited (exit 2)"
  (umask 077 && "$WARDEN" token create --role viewer --name demo-viewer --ttl 1h | tail -n 1 \
    >"$DEMO/viewer-token")
  show warden --token-file "$DEMO/viewer-token" agents
  show warden --token-file "$DEMO/viewer-token" restore "$artifact" --new-name shop_viewer || true
  printf '%s$ warden audit   (its newest event)%s\n' "$DIM" "$RESET"
  "$WARDEN" --json audit --limit 100000 | python3 -c '
import json, sys
event = json.load(sys.stdin)[-1]
print(event["seq"], event["actor"], event["action"], event["outcome"])
'

  step "Checking the audit chain"
  show warden audit verify
  trap - EXIT

  cat <<EOF

${BOLD}The demo fleet is running${RESET}, over mTLS: the coordinator's CA is in $DEMO/tls, each
agent enrolled with a one-time token, and the CLI calls with the admin token in
$DEMO/admin-token. Point the CLI at it (or: source .demo/env):

  export WARDEN_COORDINATOR=$COORDINATOR_URL WARDEN_CA_CERT=$WARDEN_CA_CERT
  export WARDEN_TOKEN_FILE=$WARDEN_TOKEN_FILE PATH="$BIN:\$PATH"

Then try:

  warden agents
  warden databases
  warden health pg2/inventory --wait
  warden backup pg2/inventory --wait
  warden orders
  warden artifacts --json
  warden audit
  warden audit verify
  warden export
  warden prune --dry-run
  warden drill pg2/inventory --wait     (after its backup)
  warden rto --json
  python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/metrics').read().decode())"
  warden restore ARTIFACT --replace --yes   (runs only inside demo-nightly: warden windows next pg1/shop)
  warden migrate status pg1/shop --dir deploy/migrations/shop
  warden migrate --selector database=shop --dir deploy/migrations/shop --waves 1,100%   (held until demo-nightly)
  warden rollouts
  warden tokens
  warden token create --role operator --name alice --ttl 8h
  warden agent revoke pg2 --reason "demo"    (then: warden agents; it cannot connect again)

PostgreSQL: psql -h 127.0.0.1 -p $PG1_PORT -U postgres shop   (pg2: port $PG2_PORT, inventory)
Logs: $DEMO/coordinator.log, $DEMO/agent-pg1.log, $DEMO/agent-pg2.log

stop with ./deploy/demo.sh stop
EOF
}

# Leaves the half-started demo in place for inspection, and says how to clean it up.
on_failed_start() {
  local status=$?
  if ((status != 0)); then
    echo "demo: setup failed (exit $status); logs are in $DEMO; stop with ./deploy/demo.sh stop" >&2
  fi
}

# `show warden ...` runs the binary that was just built, whatever is on PATH.
warden() { "$WARDEN" "$@"; }

case "${1:-start}" in
  start) start_demo ;;
  stop) stop_demo ;;
  *)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac
