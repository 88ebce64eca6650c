#!/usr/bin/env bash
# Coordinator-scale benchmark of Warden (see BENCHMARKS.md): what one coordinator costs while
# it carries a large fleet, measured with warden-fleet-sim (bench/fleet-sim), which runs every
# agent of the fleet in one process, each on its own gRPC connection on loopback.
#
# Everything lives in a temporary directory under /tmp (TMPDIR): a real warden-coordinator
# (release build, its SQLite store on disk, default heartbeat interval and lease) and a fleet
# policy whose limits let every order start at once. Then warden-fleet-sim measures:
#
#   registration  every agent connects and says Hello; until ListAgents shows all online
#   idle CPU      the coordinator's utime + stime (/proc/PID/stat) while agents heartbeat
#   memory        the coordinator's VmRSS after each phase and its peak, VmHWM
#   dispatch      --orders backups submitted at once through the admin API (SubmitBackup, as
#                 `warden backup` does), each timed until its simulated agent received it
#
# Each round runs the same simulation twice, one after the other: against a fresh coordinator,
# then against warden-fleet-floor, the transport floor (the coordinator's gRPC stack and server
# settings with nothing behind them: no store, no audit, no dispatcher). The floor is what the
# same traffic costs this machine before the coordinator does anything; the report gives each
# dispatch figure of the coordinator as a ratio to it, medians over the rounds.
#
# A markdown report (--out) gets the machine, the command, the limits of the run (file
# descriptors, ports) and PASS/MISS per target of issue 6; the raw figures go beside it
# (same name, .json). Everything started is stopped, and the directory removed, on exit.
#
#   bench/coordinator.sh            full run: 10,000 agents, 5 databases each, 5,000 orders
#   bench/coordinator.sh --smoke    tiny run that only shows the bench works (CI)
#
# Each connection takes a file descriptor on both sides: the coordinator and the simulator
# each need one per agent plus a few hundred. The soft limit (ulimit -n) is raised up to the
# hard limit for both; a hard limit too low stops the bench with how to raise it.
#
# Needs: bash 5, python3, cargo unless --bin-dir is given.
set -euo pipefail
export LC_ALL=C

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# File descriptors each process needs beyond one per agent (store, logs, admin connections,
# listeners).
FD_MARGIN=512

usage() {
  cat <<EOF
usage: $0 [--smoke] [--agents N] [--dbs-per-agent M] [--orders K] [--idle SECONDS] [--rounds R] [--out FILE] [--bin-dir DIR] [--baseline FILE]

  --smoke            tiny run: 50 agents, 2 databases each, 100 orders, 3 s idle, 1 round
                     (options after it still apply)
  --agents N         simulated agents, each on its own connection (default 10000)
  --dbs-per-agent M  databases each agent reports (default 5)
  --orders K         backups submitted at once, each of its own database (default 5000)
  --idle SECONDS     how long idle CPU is measured (default 30)
  --rounds R         rounds, each against the coordinator and then the floor (default 3);
                     the report gives medians
  --out FILE         the markdown report (default bench/results/coordinator-<UTC date>.md);
                     the raw figures go beside it as .json
  --bin-dir DIR      where warden, warden-coordinator, warden-fleet-sim and warden-fleet-floor
                     are (default: build
                     them with cargo build --release and use target/release)
  --baseline FILE    the raw figures (.json) of an earlier run, e.g. before a change to the
                     coordinator: the report shows both side by side
EOF
}

SCRIPT=coordinator-bench
# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

AGENTS=10000 DBS=5 ORDERS=5000 IDLE=30 ROUNDS=3 OUT="" BIN_DIR="" BASELINE=""
ARGS=("$@")
while (($# > 0)); do
  case $1 in
    --smoke) AGENTS=50 DBS=2 ORDERS=100 IDLE=3 ROUNDS=1 ;;
    --agents | --dbs-per-agent | --orders | --idle | --rounds | --out | --bin-dir | --baseline)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in
        --agents) positive_int "$1" "$2" && AGENTS=$2 ;;
        --dbs-per-agent) positive_int "$1" "$2" && DBS=$2 ;;
        --orders) positive_int "$1" "$2" && ORDERS=$2 ;;
        --idle) positive_int "$1" "$2" && IDLE=$2 ;;
        --rounds) positive_int "$1" "$2" && ROUNDS=$2 ;;
        --out) OUT=$2 ;;
        --bin-dir) BIN_DIR=$2 ;;
        --baseline) BASELINE=$2 ;;
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
((ORDERS <= AGENTS * DBS)) || die "--orders $ORDERS is more than the $((AGENTS * DBS)) databases of the fleet: every order backs up a database of its own"
[[ -n $OUT ]] || OUT="$ROOT/bench/results/coordinator-$(date -u +%Y-%m-%d).md"
if [[ -n $BASELINE ]]; then
  [[ -f $BASELINE ]] || die "--baseline $BASELINE is not a file: give the .json of an earlier run"
  BASELINE="$(cd "$(dirname "$BASELINE")" && pwd)/$(basename "$BASELINE")"
fi

# --- prerequisites -------------------------------------------------------------------------

((BASH_VERSINFO[0] >= 5)) || die "needs bash 5 or newer"
command -v python3 >/dev/null 2>&1 || die "python3 not found: the bench uses it to pick ports and write the report"

if [[ -z $BIN_DIR ]]; then
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) or pass --bin-dir"
  say "building the release binaries (cargo build --release)"
  (cd "$ROOT" && cargo build --release --bins -p warden-coordinator -p warden-cli -p warden-fleet-sim) >&2
  BIN_DIR="$ROOT/target/release"
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd) || die "--bin-dir $BIN_DIR is not a directory"
for bin in warden warden-coordinator warden-fleet-sim warden-fleet-floor; do
  [[ -x $BIN_DIR/$bin ]] || die "$BIN_DIR/$bin not found: build it (cargo build --release) or pass the right --bin-dir"
done
WARDEN="$BIN_DIR/warden"
mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
JSON_OUT="${OUT%.md}.json"

# File descriptors: one per connection on each side. The soft limit is raised to what the
# run needs (at most the hard limit); both processes inherit it from this shell.
FDS_NEEDED=$((AGENTS + FD_MARGIN))
FD_SOFT_BEFORE=$(ulimit -Sn)
FD_HARD=$(ulimit -Hn)
if [[ $FD_HARD != unlimited ]] && ((FD_HARD < FDS_NEEDED)); then
  die "the hard limit of open files is $FD_HARD, and $AGENTS agents need $FDS_NEEDED per process; raise it (as root: ulimit -Hn $FDS_NEEDED in this shell, or 'nofile' in /etc/security/limits.conf, or LimitNOFILE= for a systemd unit) or run fewer --agents"
fi
if [[ $FD_SOFT_BEFORE != unlimited ]] && ((FD_SOFT_BEFORE < FDS_NEEDED)); then
  ulimit -Sn "$FDS_NEEDED" || die "cannot raise the open-files limit from $FD_SOFT_BEFORE to $FDS_NEEDED (hard limit $FD_HARD)"
fi
FD_SOFT=$(ulimit -Sn)
# Ephemeral ports: every agent connection takes one on 127.0.0.1 (one destination port, so
# the range bounds the fleet).
read -r PORT_LOW PORT_HIGH </proc/sys/net/ipv4/ip_local_port_range
PORTS=$((PORT_HIGH - PORT_LOW + 1))
((PORTS > AGENTS + FD_MARGIN)) \
  || die "the ephemeral port range $PORT_LOW-$PORT_HIGH ($PORTS ports) is too small for $AGENTS connections: widen net.ipv4.ip_local_port_range (sysctl -w net.ipv4.ip_local_port_range='1024 65535') or run fewer --agents"
SOMAXCONN=$(cat /proc/sys/net/core/somaxconn)

# --- the runs ------------------------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/warden-coordinator-bench.XXXXXX")
PIDS=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop_pids "${PIDS[@]}"
  if ((status != 0)); then
    local log
    for log in "$WORK"/*.log; do
      [[ -f $log ]] || continue
      echo "--- $log" >&2
      tail -n 15 "$log" >&2 || true
    done
    echo "coordinator-bench: failed (exit $status)" >&2
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

STARTED=$SECONDS
say "work directory $WORK; binaries from $BIN_DIR; open files $FD_SOFT (was $FD_SOFT_BEFORE, hard $FD_HARD)"

# Orders must start the moment they are submitted: no window holds a backup, and the limits
# let every order of the run go at once (defaults: 2 per agent, 4 backups in the fleet).
PER_AGENT=$(((ORDERS + AGENTS - 1) / AGENTS))
((PER_AGENT >= 2)) || PER_AGENT=2
cat >"$WORK/policy.toml" <<EOF
[limits]
per_agent = $PER_AGENT
fleet_backups = $ORDERS
EOF

# Runs the simulator against the server at $1 (process $2), writing its figures to $3 and its
# log to $4; the rest of the arguments go to the simulator.
simulate() {
  local url=$1 pid=$2 out=$3 log=$4
  shift 4
  "$BIN_DIR/warden-fleet-sim" --coordinator "$url" --coordinator-pid "$pid" \
    --agents "$AGENTS" --dbs-per-agent "$DBS" --orders "$ORDERS" "$@" \
    --out "$out" 2> >(tee "$log" >&2) </dev/null \
    || die "warden-fleet-sim failed (against $url)"
  kill -0 "$pid" 2>/dev/null || die "the server under test died during the run (see $log)"
}

# Round $1 against a real coordinator: a store of its own, an admin token made on the host as
# usual, the policy applied. The simulated agents have no certificates, so it runs with
# --insecure-dev (plaintext gRPC); operator calls still need the token. Health reports are
# asked for once an hour, so idle is heartbeats only (agents still send one report as they
# connect, as real agents do); retention does not run during the bench.
coordinator_round() {
  local round=$1 dir="$WORK/coordinator-$1" port http pid
  mkdir -p "$dir"
  read -r port http <<<"$(free_ports 2)"
  export WARDEN_COORDINATOR="http://127.0.0.1:$port"
  WARDEN_TOKEN=$("$BIN_DIR/warden-coordinator" --store "sqlite://$dir/warden.db" token create --role admin \
    --name bench | tail -n 1) || die "cannot make an admin token"
  export WARDEN_TOKEN
  "$BIN_DIR/warden-coordinator" --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http" \
    --store "sqlite://$dir/warden.db" --health-interval 1h --prune-interval 1h --insecure-dev \
    >"$WORK/coordinator-$round.log" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$pid")
  wait_for_coordinator "$WARDEN" "$pid" 30
  "$WARDEN" apply -f "$WORK/policy.toml" >"$WORK/apply.log" 2>&1 || die "warden apply failed: $(cat "$WORK/apply.log")"
  say "round $round: the coordinator, $AGENTS agents x $DBS databases, $ORDERS orders"
  simulate "$WARDEN_COORDINATOR" "$pid" "$WORK/coordinator-$round.json" "$WORK/fleet-sim-coordinator-$round.log" \
    --idle "${IDLE}s"
  stop_pids "$pid"
  rm -rf "$dir"
}

# Round $1 against the transport floor (warden-fleet-floor): the same traffic, the same gRPC
# stack and server settings, and nothing behind them. Its idle CPU is not a figure here.
floor_round() {
  local round=$1 port pid
  read -r port <<<"$(free_ports 1)"
  "$BIN_DIR/warden-fleet-floor" --listen "127.0.0.1:$port" >"$WORK/floor-$round.log" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$pid")
  # The simulator's admin calls do not retry: wait until the floor takes connections.
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "warden-fleet-floor exited during startup: $(cat "$WORK/floor-$round.log")"
    ((SECONDS < deadline)) || die "warden-fleet-floor did not listen on port $port within 30 s"
    sleep 0.1
  done
  say "round $round: the transport floor, the same fleet and orders"
  simulate "http://127.0.0.1:$port" "$pid" "$WORK/floor-$round.json" "$WORK/fleet-sim-floor-$round.log" \
    --idle 1s --settle 1s --register-timeout 60s
  stop_pids "$pid"
}

for ((round = 1; round <= ROUNDS; round++)); do
  coordinator_round "$round"
  floor_round "$round"
done
FINISHED=$SECONDS

# --- the report ----------------------------------------------------------------------------

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_gib=$(awk '/^MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
disk=$(df -h --output=source,fstype,size "$WORK" | tail -n 1 | tr -s ' ')
{
  echo "date	$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "command	bench/coordinator.sh${ARGS[*]:+ ${ARGS[*]}}"
  echo "cpu	${cpu_model:-unknown}, $(nproc) CPUs (shared by the coordinator and the simulator)"
  echo "cpus	$(nproc)"
  echo "memory	$mem_gib GiB"
  echo "kernel	$(uname -sr)"
  echo "disk	$disk (the SQLite store, in $(dirname "$WORK"))"
  echo "warden	$("$WARDEN" --version) ($BIN_DIR)"
  echo "duration	$((FINISHED - STARTED)) s"
  if [[ $FD_SOFT == "$FD_SOFT_BEFORE" ]]; then
    fd_soft="soft limit $FD_SOFT"
  else
    fd_soft="soft limit $FD_SOFT (raised from $FD_SOFT_BEFORE)"
  fi
  echo "open files	$fd_soft, hard limit $FD_HARD; $FDS_NEEDED needed per process"
  echo "ports	ephemeral range $PORT_LOW-$PORT_HIGH ($PORTS ports); somaxconn $SOMAXCONN"
  echo "policy	per_agent = $PER_AGENT, fleet_backups = $ORDERS; no windows"
  echo "rounds	$ROUNDS, each against a fresh coordinator and then the transport floor"
} >"$WORK/facts.tsv"

python3 - "$WORK/facts.tsv" "$WORK" "$ROUNDS" "$JSON_OUT" "$OUT" "$BASELINE" <<'EOF'
import json, statistics, sys

facts_path, work, rounds, json_path, out, baseline_path = sys.argv[1:]
facts = dict(line.rstrip("\n").split("\t", 1) for line in open(facts_path))
coordinator = [json.load(open(f"{work}/coordinator-{i}.json")) for i in range(1, int(rounds) + 1)]
floor = [json.load(open(f"{work}/floor-{i}.json")) for i in range(1, int(rounds) + 1)]

def p99(run):
    lat = run["dispatch"]["latency_ms"]
    return float("inf") if lat is None else lat["p99"]

def peak(run):
    return max(m["peak_rss_kib"] for m in run["memory"].values()) / 1024

# The round whose coordinator p99 is the median: its figures are the run's details.
median_round = sorted(range(len(coordinator)), key=lambda i: p99(coordinator[i]))[len(coordinator) // 2]
r = dict(coordinator[median_round])
r["rounds"] = [{"coordinator": c, "floor": f} for c, f in zip(coordinator, floor)]
with open(json_path, "w") as f:
    json.dump(r, f, indent=2)
reg, idle, disp, mem = r["registration"], r["idle"], r["dispatch"], r["memory"]
lat = disp["latency_ms"]
# The targets hold over every round: the median p99 and registration time, the worst RSS and
# idle CPU.
reg_seconds = [c["registration"]["seconds"] for c in coordinator]
registered_all = all(c["registration"]["registered"] == r["agents"] for c in coordinator) and None not in reg_seconds
reg_median = statistics.median(reg_seconds) if registered_all else None
idle_worst = max(c["idle"]["coordinator_cpu_cores"] for c in coordinator)
peak_mib = max(peak(c) for c in coordinator)
p99_median = statistics.median(p99(c) for c in coordinator)
floor_p99_median = statistics.median(p99(f) for f in floor)
complete = all(c["dispatch"]["missing"] == 0 and c["dispatch"]["rejected"] == 0 for c in coordinator)

def fmt(value, unit, digits=1):
    return "–" if value is None else f"{value:,.{digits}f} {unit}"

lines = []
w = lines.append
w(f"# Warden coordinator-scale benchmark, {facts['date']}")
w("")
w(f"`{facts['command']}`: {r['agents']:,} simulated agents (bench/fleet-sim), each on its own "
  f"gRPC connection on loopback, {r['dbs_per_agent']} databases each ({r['databases']:,} in all); "
  f"heartbeat every {r['heartbeat_interval_ms']} ms, lease {r['lease_ms']} ms; "
  f"{r['connect_concurrency']} agents dialling at once.")
w("")
w("| machine | |")
w("|---|---|")
for key in ("cpu", "memory", "kernel", "disk", "warden", "duration", "open files", "ports", "policy", "rounds"):
    w(f"| {key} | {facts[key]} |")
w("")
w("## Targets")
w("")
w("| figure | measured | target | result | what limits it |")
w("|---|---:|---:|---|---|")
rows = [
    ("time to register all agents (ListAgents shows all online), median",
     fmt(reg_median, "s") + ("" if registered_all else " (not all registered in every round)"),
     "< 60 s",
     reg_median is not None and reg_median < 60,
     "one store transaction per Hello (agent, its inventory, an audit event) on the single SQLite "
     "writer, and the connection storm: every HTTP/2 handshake, the simulator's side included, "
     "on the same 2 CPUs"),
    ("coordinator CPU while idle (heartbeats only), highest",
     fmt(idle_worst, "cores", 3), "< 0.5 cores",
     idle_worst < 0.5,
     f"a heartbeat per agent every {r['heartbeat_interval_ms']} ms (kept in memory, no store "
     "write) and an HTTP/2 keepalive ping per connection every 5 s: thousands of wake-ups a "
     "second"),
    ("coordinator peak RSS (VmHWM), highest",
     fmt(peak_mib, "MiB"), "< 1024 MiB", peak_mib < 1024,
     "per connected agent: its HTTP/2 connection and stream buffers, the session task and its "
     "outbox"),
    ("dispatch latency p99 (submitted to received by the agent), median",
     fmt(p99_median, "ms"), "< 250 ms",
     p99_median < 250 and complete,
     "CPU: both CPUs are busy during the burst with six gRPC messages per order on each side "
     "(the submission and its answer, the assignment, Started, the result and its ack), the "
     "dispatcher thread and the SQLite writer thread, and the simulator. The transport floor "
     f"(the same traffic to a server with nothing behind its gRPC stack) has a median p99 of "
     f"{floor_p99_median:,.1f} ms on this machine: see below"),
]
for name, measured, target, ok, limit in rows:
    w(f"| {name} | {measured} | {target} | {'PASS' if ok else 'MISS'} | {limit} |")
w("")
w("## Against the transport floor")
w("")
w("The same simulation, alternating: a fresh coordinator, then warden-fleet-floor (the "
  "coordinator's gRPC stack and server settings with no store, audit, policy or dispatcher "
  "behind them). Ratio: coordinator / floor.")
w("")
w("| round | coordinator p50 / p99 | floor p50 / p99 | ratio p50 / p99 | all received, coordinator / floor |")
w("|---|---:|---:|---:|---:|")

def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"

def lat_of(run):
    return run["dispatch"]["latency_ms"] or {}

for i, (c, f) in enumerate(zip(coordinator, floor), 1):
    cl, fl = lat_of(c), lat_of(f)
    w(f"| {i} | {fmt(cl.get('p50'), 'ms')} / {fmt(cl.get('p99'), 'ms')} "
      f"| {fmt(fl.get('p50'), 'ms')} / {fmt(fl.get('p99'), 'ms')} "
      f"| {ratio(cl.get('p50'), fl.get('p50'))} / {ratio(cl.get('p99'), fl.get('p99'))} "
      f"| {fmt(c['dispatch']['all_received_seconds'], 's', 2)} / {fmt(f['dispatch']['all_received_seconds'], 's', 2)} |")

def median_of(runs, key):
    values = [lat_of(run).get(key) for run in runs]
    return None if None in values else statistics.median(values)

c50, c99 = median_of(coordinator, "p50"), median_of(coordinator, "p99")
f50, f99 = median_of(floor, "p50"), median_of(floor, "p99")
w(f"| median | {fmt(c50, 'ms')} / {fmt(c99, 'ms')} | {fmt(f50, 'ms')} / {fmt(f99, 'ms')} "
  f"| {ratio(c50, f50)} / {ratio(c99, f99)} | |")
w("")
def burst(runs, side):
    return statistics.median(run["dispatch"]["burst"][side] for run in runs)

w(f"CPU from the first submission until every order arrived (median over the rounds): the "
  f"coordinator {burst(coordinator, 'coordinator_cpu_cores'):.2f} cores with the simulator "
  f"{burst(coordinator, 'simulator_cpu_cores'):.2f}; the floor {burst(floor, 'coordinator_cpu_cores'):.2f} "
  f"cores with the simulator {burst(floor, 'simulator_cpu_cores'):.2f}, of {facts['cpus']} CPUs.")
w("")
w(f"## Details (round {median_round + 1}, the coordinator's median p99)")
w("")
w("| figure | value |")
w("|---|---|")
details = [
    ("agents shown online", f"{reg['registered']:,} of {r['agents']:,}"),
    ("last Welcome received by the simulator", fmt(reg["last_welcome_seconds"], "s")),
    ("coordinator CPU while agents registered", fmt(reg["coordinator_cpu_cores"], "cores", 2)),
    ("simulator CPU while idle", fmt(idle["simulator_cpu_cores"], "cores", 3)),
    ("coordinator RSS after registration / idle / dispatch",
     " / ".join(fmt(mem[k]["rss_kib"] / 1024, "MiB") for k in ("after_registration", "after_idle", "after_dispatch"))),
    ("orders submitted / accepted / rejected",
     f"{disp['orders']:,} / {disp['accepted']:,} / {disp['rejected']:,}"
     + (f" (first: {disp['first_rejection']})" if disp["first_rejection"] else "")),
    ("orders received / more than once / missing / unexpected",
     f"{disp['received']:,} / {disp['received_more_than_once']:,} / {disp['missing']:,} / {disp['unexpected']:,}"),
    ("dispatch latency p50 / p90 / p99 / max",
     "–" if lat is None else f"{lat['p50']:,.1f} / {lat['p90']:,.1f} / {lat['p99']:,.1f} / {lat['max']:,.1f} ms"),
    *[(f"latency leg: {name}, p50 / p99",
       "–" if leg is None else f"{leg['p50']:,.1f} / {leg['p99']:,.1f} ms")
      for name, leg in (
          ("call to order created in the coordinator (both gRPC stacks, runtime queues)",
           disp["breakdown_ms"]["to_coordinator"]),
          ("created to dispatched by a pass (dispatcher rounds)",
           disp["breakdown_ms"]["in_coordinator"]),
          ("dispatched to received by the agent (commit, outbox, both gRPC stacks)",
           disp["breakdown_ms"]["to_agent"]),
      )],
    ("all submissions answered", fmt(disp["submit_seconds"], "s", 2)),
    ("all orders received", fmt(disp["all_received_seconds"], "s", 2)),
    ("all orders succeeded (results recorded)",
     fmt(disp["all_succeeded_seconds"], "s", 2) + f" ({disp['succeeded']:,} of {disp['accepted']:,})"),
    ("coordinator CPU while dispatching", fmt(disp["coordinator_cpu_cores"], "cores", 2)),
    ("sessions lost / failed to open", f"{r['sessions']['sessions_lost']:,} / {r['sessions']['open_failures']:,}"
     + (f" (last: {r['sessions']['last_problem']})" if r["sessions"]["last_problem"] else "")),
]
for name, value in details:
    w(f"| {name} | {value} |")
w("")

def figures(run):
    lat = run["dispatch"]["latency_ms"] or {}
    return [
        ("time to register all agents", run["registration"]["seconds"], "s", 1),
        ("coordinator CPU while idle", run["idle"]["coordinator_cpu_cores"], "cores", 3),
        ("coordinator peak RSS", max(m["peak_rss_kib"] for m in run["memory"].values()) / 1024, "MiB", 1),
        ("dispatch latency p50", lat.get("p50"), "ms", 1),
        ("dispatch latency p99", lat.get("p99"), "ms", 1),
        ("all submissions answered", run["dispatch"]["submit_seconds"], "s", 2),
        ("all orders received", run["dispatch"]["all_received_seconds"], "s", 2),
        ("all orders succeeded", run["dispatch"]["all_succeeded_seconds"], "s", 2),
        ("coordinator CPU while dispatching", run["dispatch"]["coordinator_cpu_cores"], "cores", 2),
    ]

if baseline_path:
    before = json.load(open(baseline_path))
    w("## Before and after")
    w("")
    w(f"Before: `{baseline_path.rsplit('/', 1)[-1]}`, the same run on an earlier coordinator.")
    w("")
    w("| figure | before | after |")
    w("|---|---:|---:|")
    for (name, old, unit, digits), (_, new, _, _) in zip(figures(before), figures(r)):
        w(f"| {name} | {fmt(old, unit, digits)} | {fmt(new, unit, digits)} |")
    w("")
text = "\n".join(lines)
with open(out, "w") as f:
    f.write(text + "\n")
print(text)
EOF
say "report written to $OUT, raw figures in $JSON_OUT ($((SECONDS - STARTED)) s in all)"
