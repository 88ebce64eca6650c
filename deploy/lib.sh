# Shell helpers shared by deploy/demo.sh and the benchmarks in bench/: finding PostgreSQL,
# running it as the postgres user when root, creating a cluster, picking free ports.
# Source it after setting SCRIPT (the name errors start with).
#
# shellcheck shell=bash

die() {
  echo "${SCRIPT:-warden}: $*" >&2
  exit 1
}

is_root() { [[ $EUID -eq 0 ]]; }

# PostgreSQL refuses to run as root, so clusters belong to the postgres user then.
as_postgres() {
  if is_root; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Exits with a clear error when running as root without a postgres user to own clusters.
need_postgres_user() {
  if is_root; then
    id postgres >/dev/null 2>&1 \
      || die "running as root, but there is no postgres user to own the clusters: create one (useradd -r postgres) or run as a normal user"
  fi
  return 0
}

positive_int() {
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive whole number, got '$2'"
}

# Prints the first directory holding initdb and pg_ctl: pg_config --bindir, PATH, then
# /usr/lib/postgresql/*/bin newest first.
find_pg_bindir() {
  local candidates=() dir
  if command -v pg_config >/dev/null 2>&1; then
    candidates+=("$(pg_config --bindir 2>/dev/null || true)")
  fi
  if command -v initdb >/dev/null 2>&1; then
    candidates+=("$(dirname "$(command -v initdb)")")
  fi
  while IFS= read -r dir; do
    candidates+=("$dir")
  done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V -r)
  for dir in "${candidates[@]}"; do
    if [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

# Prints the server's bin directory, or exits saying what to install.
need_pg_bindir() {
  find_pg_bindir \
    || die "cannot find PostgreSQL server binaries (initdb, pg_ctl): install PostgreSQL 15+ (Debian/Ubuntu: apt-get install postgresql) or put its bin directory on PATH"
}

# Prints a PostgreSQL client tool from the server's bin directory BINDIR, else from PATH.
pg_tool() {
  local bindir=$1 tool=$2
  if [[ -x $bindir/$tool ]]; then
    echo "$bindir/$tool"
  elif command -v "$tool" >/dev/null 2>&1; then
    command -v "$tool"
  else
    die "cannot find $tool next to initdb ($bindir) or on PATH: install the PostgreSQL server and client (Debian/Ubuntu: apt-get install postgresql)"
  fi
}

# Creates a cluster in DIR (server binaries in BINDIR) and starts it on 127.0.0.1:PORT with
# its socket in DIR; initdb's output goes to LOG, the server's to DIR/log. Further
# arguments are server settings (`-c name=value ...`).
start_cluster_in() {
  local bindir=$1 dir=$2 port=$3 log=$4
  shift 4
  mkdir -p "$dir"
  if is_root; then chown postgres: "$dir"; fi
  chmod 700 "$dir"
  as_postgres "$bindir/initdb" -D "$dir" -U postgres -A trust -N -E UTF8 --locale=C >"$log" 2>&1 \
    || die "initdb of $dir failed: $(tail -n 5 "$log")"
  as_postgres "$bindir/pg_ctl" -D "$dir" -w -l "$dir/log" \
    -o "-p $port -k '$dir' -c listen_addresses=127.0.0.1 $*" start >/dev/null \
    || die "PostgreSQL in $dir did not start: $(tail -n 5 "$dir/log")"
}

# Stops the processes PIDs: SIGTERM to all, up to 5 s each to exit, then SIGKILL.
stop_pids() {
  local pid waited
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < 50)); do
      sleep 0.1
      waited=$((waited + 1))
    done
    kill -9 "$pid" 2>/dev/null || true
  done
}

# Prints N distinct free TCP ports on 127.0.0.1, holding them all open while choosing so
# none is picked twice.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Makes the coordinator's CA and server certificate in DIR (`ca init`), for 127.0.0.1 and
# localhost, and prints the secret of a new admin token for the store at STORE_URL, made on
# this host as operators make their first one.
init_coordinator_security() {
  local bin=$1 dir=$2 store=$3 name=$4
  "$bin/warden-coordinator" --tls-dir "$dir" ca init --hostname 127.0.0.1 --hostname localhost >/dev/null \
    || return 1
  # `token create` prints the secret on its last line.
  "$bin/warden-coordinator" --store "$store" token create --role admin --name "$name" --ttl 7d | tail -n 1
}

# Waits until the coordinator (process PID) answers the CLI at WARDEN_COORDINATOR.
wait_for_coordinator() {
  local warden=$1 pid=$2 timeout=$3
  local deadline=$((SECONDS + timeout))
  until "$warden" agents >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "the coordinator exited during startup"
    ((SECONDS < deadline)) || die "the coordinator did not answer within ${timeout}s"
    sleep 0.2
  done
}

# Enrolls agent NAME (config CONFIG): a one-time token made with the CLI (admin), then
# `warden-agent enroll`, which makes the agent's key and gets its certificate.
enroll_agent() {
  local bin=$1 config=$2 name=$3 ca_cert=$4 token
  token=$("$bin/warden" token create --agent "$name" --ttl 10m | tail -n 1) || return 1
  WARDEN_AGENT_ENROLL_TOKEN=$token "$bin/warden-agent" --config "$config" enroll --ca-cert "$ca_cert"
}
