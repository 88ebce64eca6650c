#!/usr/bin/env bash
# Data-path benchmark of Warden (see BENCHMARKS.md): how fast a backup and a restore move a
# database compared with what pg_dump, zstd and pg_restore do on their own.
#
# Everything lives in a temporary directory under /tmp (TMPDIR): a PostgreSQL cluster on a
# free port, a coordinator with its own SQLite store and ports, one agent with a file://
# repository. Two datasets are generated: `pgb` (pgbench -i at --scale) and `md5` (--md5-rows
# rows of md5 text, which compresses poorly). Then, per repetition and dataset, alternating:
#
#   backup  (a) warden backup --wait         (dispatch, pg_dump, zstd, sha256, repository, manifest)
#           (b) pg_dump -Fc > f              (pg_dump's default gzip compression)
#           (c) pg_dump -Fc -Z0 | zstd -T0 > f
#           (d) pg_dump -Fc -Z0 > /dev/null  (the floor)
#   restore (a) warden restore --new-name --wait
#           (b) pg_restore -j 2 from a local uncompressed (-Z0) file
#           (c) zstd -dc f | pg_restore
#
# Medians go into a markdown report (--out) with bytes/s, sizes, ratios and PASS/MISS per
# target of issue 6. Everything started is stopped, and the directory removed, on exit.
#
#   bench/datapath.sh                full run (about 1 GB of pgbench data, 5 repetitions)
#   bench/datapath.sh --smoke        tiny run that only shows the bench works (CI)
#
# Needs: bash 5, python3, zstd (the CLI), PostgreSQL 15+ server and client binaries
# (initdb, pg_ctl, psql, pg_dump, pg_restore, pgbench), cargo unless --bin-dir is given.
set -euo pipefail
# EPOCHREALTIME must use a '.' as its decimal point.
export LC_ALL=C

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# How long the agent gets to come online.
ONLINE_TIMEOUT=60
AGENT=bench

usage() {
  cat <<EOF
usage: $0 [--smoke] [--reps N] [--scale S] [--md5-rows N] [--out FILE] [--bin-dir DIR]

  --smoke        tiny run: pgbench scale 1, 20000 md5 rows, 1 repetition (options after it
                 still apply)
  --reps N       repetitions of every measurement, medians reported (default 5)
  --scale S      pgbench scale of dataset pgb (default 70: about 1 GB in the database)
  --md5-rows N   rows of dataset md5 (default 3000000)
  --out FILE     the markdown report (default bench/results/datapath-<UTC date>.md)
  --bin-dir DIR  where warden, warden-coordinator and warden-agent are (default: build them
                 with cargo build --release and use target/release)
EOF
}

SCRIPT=datapath
# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

REPS=5 SCALE=70 MD5_ROWS=3000000 OUT="" BIN_DIR="" SMOKE=0
while (($# > 0)); do
  case $1 in
    --smoke) SMOKE=1 REPS=1 SCALE=1 MD5_ROWS=20000 ;;
    --reps | --scale | --md5-rows | --out | --bin-dir)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in
        --reps) positive_int "$1" "$2" && REPS=$2 ;;
        --scale) positive_int "$1" "$2" && SCALE=$2 ;;
        --md5-rows) positive_int "$1" "$2" && MD5_ROWS=$2 ;;
        --out) OUT=$2 ;;
        --bin-dir) BIN_DIR=$2 ;;
      esac
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
  shift
done
[[ -n $OUT ]] || OUT="$ROOT/bench/results/datapath-$(date -u +%Y-%m-%d).md"

# --- prerequisites -------------------------------------------------------------------------

((BASH_VERSINFO[0] >= 5)) || die "needs bash 5 or newer (for EPOCHREALTIME)"
command -v python3 >/dev/null 2>&1 || die "python3 not found: the bench uses it to pick ports, read JSON and write the report"
command -v zstd >/dev/null 2>&1 \
  || die "the zstd command-line tool is not installed; it is the baseline the bench compares with: install it (Debian/Ubuntu: apt-get install zstd)"
PGBIN=$(need_pg_bindir)
PSQL=$(pg_tool "$PGBIN" psql)
PG_DUMP=$(pg_tool "$PGBIN" pg_dump)
PG_RESTORE=$(pg_tool "$PGBIN" pg_restore)
PGBENCH=$(pg_tool "$PGBIN" pgbench)
need_postgres_user

if [[ -z $BIN_DIR ]]; then
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) or pass --bin-dir"
  say "building the release binaries (cargo build --release)"
  (cd "$ROOT" && cargo build --release --bins -p warden-coordinator -p warden-agent -p warden-cli) >&2
  BIN_DIR="$ROOT/target/release"
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd) || die "--bin-dir $BIN_DIR is not a directory"
for bin in warden warden-coordinator warden-agent; do
  [[ -x $BIN_DIR/$bin ]] || die "$BIN_DIR/$bin not found: build it (cargo build --release) or pass the right --bin-dir"
done
WARDEN="$BIN_DIR/warden"
mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"

# --- the fleet -----------------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/warden-bench.XXXXXX")
# As root the cluster runs as postgres, which must reach its directory.
chmod 755 "$WORK"
PIDS=()
CLUSTER_STARTED=0

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_pids "${PIDS[@]}"
  if ((CLUSTER_STARTED)); then
    as_postgres "$PGBIN/pg_ctl" -D "$WORK/pg" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if ((status != 0)); then
    local log
    for log in "$WORK"/coordinator.log "$WORK"/agent.log "$WORK"/pg/log; do
      [[ -f $log ]] || continue
      echo "--- $log" >&2
      grep -Ev '^ +([0-9]+: |at )' "$log" | tail -n 15 >&2 || true
    done
    echo "datapath: failed (exit $status)" >&2
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a program in the background, logging to a file, and remembers it for cleanup.
start_background() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 </dev/null &
  PIDS+=("$!")
}

read -r PG_PORT COORDINATOR_PORT HTTP_PORT <<<"$(free_ports 3)"
# The fleet runs as in production: TLS, an enrolled agent, an admin token.
export WARDEN_COORDINATOR="https://127.0.0.1:$COORDINATOR_PORT"
export WARDEN_CA_CERT="$WORK/tls/ca.pem"

sql() {
  local db=$1
  shift
  "$PSQL" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" "$@"
}
sql_value() { sql "$1" -A -t -c "$2"; }

start_cluster() {
  # Larger WAL between checkpoints: loading and restoring a GB should not be paced by
  # checkpoints landing at random points of the measurements.
  start_cluster_in "$PGBIN" "$WORK/pg" "$PG_PORT" "$WORK/initdb.log" \
    -c max_wal_size=8GB -c checkpoint_timeout=30min
  CLUSTER_STARTED=1
}

load_datasets() {
  sql postgres -c "CREATE DATABASE pgb" -c "CREATE DATABASE md5"
  say "generating pgb: pgbench -i -s $SCALE"
  "$PGBENCH" -i -s "$SCALE" -I dtGvp -q -h 127.0.0.1 -p "$PG_PORT" -U postgres pgb >"$WORK/pgbench.log" 2>&1 \
    || die "pgbench -i failed: $(tail -n 5 "$WORK/pgbench.log")"
  say "generating md5: $MD5_ROWS rows of md5 text"
  sql md5 <<SQL
CREATE TABLE md5 (id bigint PRIMARY KEY, v text NOT NULL);
INSERT INTO md5 SELECT i, md5(i::text) FROM generate_series(1, $MD5_ROWS) AS i;
VACUUM ANALYZE md5;
SQL
  sql postgres -c CHECKPOINT
}

start_fleet() {
  mkdir -p "$WORK/repo" "$WORK/staging" "$WORK/out"
  WARDEN_TOKEN=$(init_coordinator_security "$BIN_DIR" "$WORK/tls" "sqlite://$WORK/warden.db" bench) \
    || die "cannot set up the coordinator's CA and admin token"
  export WARDEN_TOKEN
  start_background "$WORK/coordinator.log" \
    "$BIN_DIR/warden-coordinator" --listen "127.0.0.1:$COORDINATOR_PORT" --http-listen "127.0.0.1:$HTTP_PORT" \
    --store "sqlite://$WORK/warden.db" --tls-dir "$WORK/tls" --health-interval 1h --prune-interval 1h
  wait_for_coordinator "$WARDEN" "${PIDS[-1]}" "$ONLINE_TIMEOUT"
  (umask 077 && cat >"$WORK/agent.toml") <<EOF
name = "$AGENT"
coordinator = "$WARDEN_COORDINATOR"
tls_dir = "$WORK/agent-tls"
repository = "file://$WORK/repo"
pg_bindir = "$PGBIN"
staging_dir = "$WORK/staging"

[[databases]]
name = "pgb"
url = "postgres://postgres@127.0.0.1:$PG_PORT/pgb"

[[databases]]
name = "md5"
url = "postgres://postgres@127.0.0.1:$PG_PORT/md5"
EOF
  enroll_agent "$BIN_DIR" "$WORK/agent.toml" "$AGENT" "$WARDEN_CA_CERT" >"$WORK/enroll.log" 2>&1 \
    || die "cannot enroll the agent: $(tail -n 3 "$WORK/enroll.log")"
  start_background "$WORK/agent.log" "$BIN_DIR/warden-agent" --config "$WORK/agent.toml"
}

# Prints how many of the agent's two databases the coordinator knows with the agent online.
databases_online() {
  { "$WARDEN" --json databases 2>/dev/null || true; } | python3 -c '
import json, sys
try:
    dbs = json.load(sys.stdin)
except ValueError:  # the coordinator is not answering yet
    dbs = []
print(sum(1 for d in dbs if d.get("agent_online") and d.get("agent") == sys.argv[1] and d.get("name") in ("pgb", "md5")))
' "$AGENT"
}

wait_for_agent() {
  local deadline=$((SECONDS + ONLINE_TIMEOUT)) online=0 pid
  while ((SECONDS < deadline)); do
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || die "a bench process (pid $pid) exited during startup"
    done
    online=$(databases_online)
    [[ $online == 2 ]] && return 0
    sleep 0.3
  done
  die "the agent did not come online with both databases within ${ONLINE_TIMEOUT}s"
}

# --- measurements --------------------------------------------------------------------------

# Raw measurements: kind dataset method rep micros bytes.
RESULTS="$WORK/results.tsv"
# Warden's own stage timings: kind dataset rep stage millis.
STAGES="$WORK/stages.tsv"
: >"$RESULTS"
: >"$STAGES"

now_us() { echo "${EPOCHREALTIME/./}"; }

# Runs "$@" and sets ELAPSED_US to its wall time. Dirty pages of the run before are written
# first, so no run pays for another's writeback.
timed() {
  sync
  local t0
  t0=$(now_us)
  "$@"
  ELAPSED_US=$(($(now_us) - t0))
}

record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

dump_args() { echo "-h 127.0.0.1 -p $PG_PORT -U postgres --no-password -d $1"; }

# Reads JSON on stdin and prints what the python expression (over `j`) makes of it.
json() { python3 -c "import json, sys; j = json.load(sys.stdin); print($1)"; }

# Records how long the order in order.json took on the coordinator (created to finished):
# the wall time without the CLI's start, submission and polling.
record_order() {
  python3 - "$WORK/order.json" "$1" "$2" "$3" >>"$STAGES" <<'EOF'
import datetime, json, sys
path, kind, ds, rep = sys.argv[1:]
order = json.load(open(path))
at = lambda key: datetime.datetime.fromisoformat(order[key].replace("Z", "+00:00"))
ms = round((at("finished_at") - at("created_at")).total_seconds() * 1000)
print(f"{kind}\t{ds}\t{rep}\torder\t{ms}")
EOF
}

backup_warden() { "$WARDEN" --json backup "$AGENT/$1" --reason bench --wait >"$WORK/order.json"; }
backup_gzip() {
  # shellcheck disable=SC2046 # the arguments are split on purpose
  "$PG_DUMP" -Fc $(dump_args "$1") >"$WORK/out/$1.gz.dump"
}
backup_zstd() {
  # shellcheck disable=SC2046
  "$PG_DUMP" -Fc -Z0 $(dump_args "$1") | zstd -T0 -q >"$WORK/out/$1.dump.zst"
}
backup_floor() {
  # shellcheck disable=SC2046
  "$PG_DUMP" -Fc -Z0 $(dump_args "$1") >/dev/null
}

run_backups() {
  local rep=$1 ds=$2 artifact size
  timed backup_warden "$ds"
  artifact=$(json 'j["artifact_id"]' <"$WORK/order.json")
  record_order backup "$ds" "$rep"
  "$WARDEN" --json artifacts "$AGENT/$ds" >"$WORK/artifacts.json"
  python3 - "$WORK/artifacts.json" "$artifact" "$ds" "$rep" >>"$STAGES" <<'EOF'
import json, sys
path, artifact, ds, rep = sys.argv[1:]
a = next(a for a in json.load(open(path)) if a["id"] == artifact)
for stage, ms in a["manifest"]["timings_ms"].items():
    print(f"backup\t{ds}\t{rep}\t{stage}\t{ms}")
print(f"backup\t{ds}\t{rep}\tsize_bytes\t{a['size_bytes']}")
print(f"backup\t{ds}\t{rep}\traw_bytes\t{a['raw_bytes']}")
EOF
  size=$(awk -F'\t' -v ds="$ds" -v rep="$rep" '$1 == "backup" && $2 == ds && $3 == rep && $4 == "size_bytes" {print $5}' "$STAGES")
  record backup "$ds" a "$rep" "$ELAPSED_US" "$size"
  LAST_ARTIFACT[$ds]=$artifact

  rm -f "$WORK/out/$ds.gz.dump"
  timed backup_gzip "$ds"
  record backup "$ds" b "$rep" "$ELAPSED_US" "$(stat -c %s "$WORK/out/$ds.gz.dump")"

  rm -f "$WORK/out/$ds.dump.zst"
  timed backup_zstd "$ds"
  record backup "$ds" c "$rep" "$ELAPSED_US" "$(stat -c %s "$WORK/out/$ds.dump.zst")"

  timed backup_floor "$ds"
  record backup "$ds" d "$rep" "$ELAPSED_US" 0
}

restore_warden() {
  "$WARDEN" --json restore "$1" --new-name "$2" --reason bench --wait >"$WORK/order.json"
}
# Creating the database is part of each restore, as it is of Warden's.
restore_plain() {
  sql postgres -c "CREATE DATABASE $2"
  "$PG_RESTORE" -j 2 --exit-on-error -h 127.0.0.1 -p "$PG_PORT" -U postgres --no-password -d "$2" "$1"
}
restore_zstd() {
  sql postgres -c "CREATE DATABASE $2"
  zstd -dc -q "$1" | "$PG_RESTORE" --exit-on-error -h 127.0.0.1 -p "$PG_PORT" -U postgres --no-password -d "$2"
}

# Drops the restored copy and checkpoints, so the next restore starts from the same state.
drop_copy() {
  sql postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c CHECKPOINT
}

run_restores() {
  local rep=$1 ds=$2 copy="restored_$2"
  timed restore_warden "${LAST_ARTIFACT[$ds]}" "$copy"
  record_order restore "$ds" "$rep"
  record restore "$ds" a "$rep" "$ELAPSED_US" "$(awk -F'\t' -v ds="$ds" '$1 == "backup" && $2 == ds && $4 == "size_bytes" {s = $5} END {print s}' "$STAGES")"
  python3 - "$WORK/order.json" "$ds" "$rep" >>"$STAGES" <<'EOF'
import json, sys
path, ds, rep = sys.argv[1:]
for p in json.load(open(path))["restore"]["phases"]:
    print(f"restore\t{ds}\t{rep}\t{p['phase']}\t{p['millis']}")
EOF
  drop_copy "$copy"

  timed restore_plain "$WORK/out/$ds.Z0.dump" "$copy"
  record restore "$ds" b "$rep" "$ELAPSED_US" "$(stat -c %s "$WORK/out/$ds.Z0.dump")"
  drop_copy "$copy"

  timed restore_zstd "$WORK/out/$ds.dump.zst" "$copy"
  record restore "$ds" c "$rep" "$ELAPSED_US" "$(stat -c %s "$WORK/out/$ds.dump.zst")"
  drop_copy "$copy"
}

# --- the run -------------------------------------------------------------------------------

STARTED=$SECONDS
DATASETS=(pgb md5)
declare -A LAST_ARTIFACT

say "work directory $WORK; PostgreSQL from $PGBIN on port $PG_PORT; binaries from $BIN_DIR"
start_cluster
load_datasets
start_fleet
wait_for_agent

# Dataset facts: name, database size, raw dump size (an uncompressed custom-format dump, also
# the input of restore (b)). Taking it reads every table once, so the first measurement does
# not pay for a cold cache.
: >"$WORK/datasets.tsv"
for ds in "${DATASETS[@]}"; do
  # shellcheck disable=SC2046
  "$PG_DUMP" -Fc -Z0 $(dump_args "$ds") >"$WORK/out/$ds.Z0.dump"
  printf '%s\t%s\t%s\n' "$ds" "$(sql_value "$ds" "SELECT pg_database_size(current_database())")" \
    "$(stat -c %s "$WORK/out/$ds.Z0.dump")" >>"$WORK/datasets.tsv"
done
LOADED=$SECONDS

for ((rep = 1; rep <= REPS; rep++)); do
  for ds in "${DATASETS[@]}"; do
    say "backups, repetition $rep of $REPS, $ds"
    run_backups "$rep" "$ds"
  done
done
BACKED_UP=$SECONDS
for ((rep = 1; rep <= REPS; rep++)); do
  for ds in "${DATASETS[@]}"; do
    say "restores, repetition $rep of $REPS, $ds"
    run_restores "$rep" "$ds"
  done
done
RESTORED=$SECONDS

# --- the report ----------------------------------------------------------------------------

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_gib=$(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
disk=$(df -h --output=source,fstype,size "$WORK" | tail -n 1 | tr -s ' ')
{
  echo "date	$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "command	bench/datapath.sh$( ((SMOKE)) && echo ' --smoke') --reps $REPS --scale $SCALE --md5-rows $MD5_ROWS"
  echo "cpu	${cpu_model:-unknown}, $(nproc) CPUs"
  echo "memory	$mem_gib GiB"
  echo "kernel	$(uname -sr)"
  echo "disk	$disk (work directory $(dirname "$WORK"))"
  echo "postgres	$("$PGBIN/postgres" --version)"
  echo "zstd	$(zstd -V)"
  echo "warden	$("$WARDEN" --version) ($BIN_DIR)"
  echo "durations	setup and data $((LOADED - STARTED)) s, backups $((BACKED_UP - LOADED)) s, restores $((RESTORED - BACKED_UP)) s"
  echo "scale	$SCALE"
  echo "md5_rows	$MD5_ROWS"
} >"$WORK/facts.tsv"

python3 - "$WORK" "$OUT" "$REPS" <<'EOF'
import statistics, sys
from collections import defaultdict

work, out, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
facts = dict(line.rstrip("\n").split("\t", 1) for line in open(f"{work}/facts.tsv"))
datasets = {}
for line in open(f"{work}/datasets.tsv"):
    ds, db_size, raw = line.split()
    datasets[ds] = (int(db_size), int(raw))
runs = defaultdict(list)   # (kind, ds, method) -> [seconds]
sizes = defaultdict(list)  # (kind, ds, method) -> [bytes]
for line in open(f"{work}/results.tsv"):
    kind, ds, method, rep, micros, size = line.split()
    runs[kind, ds, method].append(int(micros) / 1e6)
    sizes[kind, ds, method].append(int(size))
stages = defaultdict(list)  # (kind, ds, stage) -> [millis or bytes]
stage_order = defaultdict(list)
for line in open(f"{work}/stages.tsv"):
    kind, ds, rep, stage, value = line.split()
    stages[kind, ds, stage].append(int(value))
    if stage not in stage_order[kind]:
        stage_order[kind].append(stage)

med = lambda xs: statistics.median(xs)
def mb(n): return f"{n / 1e6:,.1f} MB" if n >= 10e6 else f"{n / 1e6:.2f} MB"
def secs(xs): return ", ".join(f"{x:.2f}" for x in xs)

BACKUP = {
    "a": "(a) `warden backup --wait`",
    "b": "(b) `pg_dump -Fc` (gzip)",
    "c": "(c) `pg_dump -Fc -Z0 \\| zstd -T0`",
    "d": "(d) `pg_dump -Fc -Z0 > /dev/null`",
}
RESTORE = {
    "a": "(a) `warden restore --new-name --wait`",
    "b": "(b) `pg_restore -j 2` of a -Z0 file",
    "c": "(c) `zstd -dc \\| pg_restore`",
}
DESCRIBE = {
    "pgb": f"pgbench -i -s {facts['scale']}",
    "md5": f"{int(facts['md5_rows']):,} rows (bigint, md5 text)",
}

lines = []
w = lines.append
w(f"# Warden data-path benchmark, {facts['date']}")
w("")
w(f"`{facts['command']}`: {reps} repetition(s), medians; MB = 10^6 bytes, MB/s = raw dump "
  "bytes (an uncompressed `pg_dump -Fc -Z0`) per second of wall time.")
w("")
w("| machine | |")
w("|---|---|")
for key in ("cpu", "memory", "kernel", "disk", "postgres", "zstd", "warden", "durations"):
    w(f"| {key} | {facts[key]} |")
w("")
w("## Datasets")
w("")
w("| dataset | contents | database size | raw dump |")
w("|---|---|---:|---:|")
for ds, (db_size, raw) in datasets.items():
    w(f"| {ds} | {DESCRIBE[ds]} | {mb(db_size)} | {mb(raw)} |")
w("")

targets = []
w("## Backup")
w("")
w("| dataset | method | median s | MB/s | output size | × (b) time | × (c) time | × (d) time | runs (s) |")
w("|---|---|---:|---:|---:|---:|---:|---:|---|")
for ds, (_, raw) in datasets.items():
    m = {k: med(runs["backup", ds, k]) for k in BACKUP}
    size = {k: med(sizes["backup", ds, k]) for k in BACKUP}
    for k, label in BACKUP.items():
        shown = "–" if k == "d" else mb(size[k])
        w(f"| {ds} | {label} | {m[k]:.2f} | {raw / m[k] / 1e6:,.1f} | {shown} | "
          f"{m[k] / m['b']:.2f} | {m[k] / m['c']:.2f} | {m[k] / m['d']:.2f} | {secs(runs['backup', ds, k])} |")
    if ds == "md5":
        targets.append((f"backup time (a) ≤ 0.50 × (b)", ds, m["a"] / m["b"], 0.50, "×"))
        targets.append((f"backup size (a) ≤ (b)", ds, size["a"] / size["b"], 1.00, "×"))
    targets.append((f"backup time (a) ≤ 1.10 × (c)", ds, m["a"] / m["c"], 1.10, "×"))
w("")
w("## Restore")
w("")
w("| dataset | method | median s | MB/s | input size | × fastest of (b), (c) | runs (s) |")
w("|---|---|---:|---:|---:|---:|---|")
for ds, (_, raw) in datasets.items():
    m = {k: med(runs["restore", ds, k]) for k in RESTORE}
    size = {k: med(sizes["restore", ds, k]) for k in RESTORE}
    fastest = min(m["b"], m["c"])
    for k, label in RESTORE.items():
        w(f"| {ds} | {label} | {m[k]:.2f} | {raw / m[k] / 1e6:,.1f} | {mb(size[k])} | "
          f"{m[k] / fastest:.2f} | {secs(runs['restore', ds, k])} |")
    targets.append((f"restore time (a) ≤ 1.15 × fastest of (b), (c)", ds, m["a"] / fastest, 1.15, "×"))
w("")
w("## Targets")
w("")
w("| target | dataset | measured | limit | result |")
w("|---|---|---:|---:|---|")
for name, ds, value, limit, unit in targets:
    w(f"| {name} | {ds} | {value:.2f}{unit} | {limit:.2f}{unit} | {'PASS' if value <= limit else 'MISS'} |")
w("")
w("## Warden's stages (medians)")
w("")
w("Seconds. Backup: the manifest's `timings_ms` (agent side; stages the agent runs side by "
  "side overlap). Restore: the order's phases. `order`: created to finished on the coordinator; "
  "`wall` less `order` is the CLI's start, submission and polling.")
w("")
for kind in ("backup", "restore"):
    # The manifest's timings come in name order; a backup runs them in this one.
    first = ["snapshot", "dump", "count_rows", "globals", "commit"] if kind == "backup" else []
    skip = ("size_bytes", "raw_bytes", "order")
    names = [s for s in first if s in stage_order[kind]]
    names += [s for s in stage_order[kind] if s not in names and s not in skip]
    if not names:
        continue
    w(f"| {kind} | " + " | ".join(names) + " | order | wall |")
    w("|---|" + "---:|" * (len(names) + 2))
    for ds in datasets:
        values = [med(stages[kind, ds, s]) / 1000 if stages[kind, ds, s] else 0 for s in names]
        values.append(med(stages[kind, ds, "order"]) / 1000)
        values.append(med(runs[kind, ds, "a"]))
        w(f"| {ds} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    w("")
text = "\n".join(lines)
with open(out, "w") as f:
    f.write(text)
print(text)
EOF
say "report written to $OUT ($((SECONDS - STARTED)) s in all)"
