#!/usr/bin/env bash
# dlba proxy benchmark: dlba against HAProxy and nginx, one process / one thread each, in
# front of one nginx back end, on this machine only (127.0.0.1).  See bench/README.md.
#
#   bash bench/run.sh                 # 10 s runs, 3 runs per workload and proxy (~25 min)
#   QUICK=1 bash bench/run.sh         # 3 s runs: a smoke test (~8 min)
#   DLBA_BASE=8c0c0b2 PROXIES="haproxy dlba" bash bench/run.sh
#                                     # also dlba as it was at that commit, in the same run
#
# Environment (all optional):
#   DURATION=10  RUNS=3  WARMUP=1     seconds per measured run, runs, unmeasured warm-up
#   OL_RUNS=5                         runs of the open-loop workload (its p99 is the noisiest)
#   NICE=-10                          the measured processes get priority over anything else
#                                     the machine runs (0: none); p99s are far steadier
#   PROXIES="haproxy nginx dlba"      which proxies
#   WORKLOADS="http-ka-100 ..."       which workloads (keys in proxybench.py); default all
#   WRK_THREADS=2 WRK_CONNS=64        closed-loop load (wrk): enough that dlba is saturated
#   TLS_CLIENTS=8                     concurrent clients in the full-handshake workloads
#   RATE=2000 RATE_CONNS=32           the fixed-rate (open-loop) keep-alive workloads
#   TLS_RATE=200                      handshakes/s in the fixed-rate full-handshake workload
#   PROFILE="http-ka-100 https-ka-100"
#                                     after measuring, py-spy samples dlba (and dlba-base)
#                                     under these workloads; summaries in bench/out/
#   DLBA_REV=REV                      measure dlba as it is at git revision REV, not the
#                                     work tree (with DLBA_BASE: compare two commits)
#   DLBA_BASE=REV                     also measure dlba at git revision REV (git archive of
#                                     this repository), as "dlba-base", in the same run
#   PIN=1                             proxy on CPU 0; back end and load generator on CPU 1
#   PYTHON=python3 TWISTD=twistd      the interpreter / twistd that run dlba
#   DLBA_FROM_TREE=1                  run dlba from this work tree (PYTHONPATH), not the
#                                     installed copy, so the bench measures the code here
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then DURATION=${DURATION:-3}; else DURATION=${DURATION:-10}; fi
RUNS=${RUNS:-3}
if [[ $QUICK == 1 ]]; then OL_RUNS=${OL_RUNS:-$RUNS}; else OL_RUNS=${OL_RUNS:-5}; fi
NICE=${NICE:--10}
WARMUP=${WARMUP:-1}
PROXIES=${PROXIES:-"haproxy nginx dlba"}
WORKLOADS=${WORKLOADS:-}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-64}
TLS_CLIENTS=${TLS_CLIENTS:-8}
RATE=${RATE:-2000}
RATE_CONNS=${RATE_CONNS:-32}
TLS_RATE=${TLS_RATE:-200}
DLBA_BASE=${DLBA_BASE:-}
DLBA_REV=${DLBA_REV:-}
PROFILE=${PROFILE:-}
PIN=${PIN:-1}
PYTHON=${PYTHON:-python3}
TWISTD=${TWISTD:-twistd}
DLBA_FROM_TREE=${DLBA_FROM_TREE:-1}

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------------ 1. what we need

install_missing() {
    local pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v haproxy >/dev/null || pkgs+=(haproxy)
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    command -v gcc >/dev/null || pkgs+=(gcc libc6-dev)
    [[ -e /usr/include/openssl/ssl.h ]] || pkgs+=(libssl-dev)
    command -v openssl >/dev/null || pkgs+=(openssl)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v taskset >/dev/null || pkgs+=(util-linux)
    if [[ -n $PROFILE ]] && ! command -v py-spy >/dev/null; then
        "$PYTHON" -m pip install -q py-spy || log "pip install py-spy failed: no profile"
    fi
    if ((${#pkgs[@]})); then
        log "installing Debian packages: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        if ! apt-get install -y -qq "${pkgs[@]}"; then
            # nginx-light is a transitional name on some releases: fall back to nginx
            apt-get install -y -qq "${pkgs[@]/nginx-light/nginx}"
        fi
    fi
}

# twistd finds dlba once the project is installed; pip brings its dependencies too.
dlba_plugin_available() {
    "$TWISTD" --help 2>/dev/null | grep -qE '^[[:space:]]+dlba[[:space:]]'
}

install_missing
if [[ " $PROXIES " == *" dlba "* ]] && ! dlba_plugin_available; then
    log "twistd dlba not available: pip install $REPO"
    "$PYTHON" -m pip install -q "$REPO" || log "pip install failed: the dlba leg will be skipped"
fi

# ------------------------------------------------------------------ 2. scratch space, cleanup

TMP=$(mktemp -d /tmp/dlba-bench.XXXXXX)
PIDS=()        # every process this script started, stopped on exit by PID
declare -A PID_OF=()

descendants() { # PIDs below $1 (nginx's worker below its master), one a line
    local kid
    # shellcheck disable=SC2013  # the children files are space-separated PIDs
    for kid in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        echo "$kid"
        descendants "$kid"
    done
}

is_our_child() { # PID: still a child of this shell (never signal a PID that was reused)
    local stat ppid
    stat=$(cat /proc/"$1"/stat 2>/dev/null) || return 1
    stat=${stat##*) } # fields after the command name: state, ppid, ...
    read -r _ ppid _ <<< "$stat"
    [[ $ppid == "$$" ]]
}

cleanup() {
    local rc=$? pid ours=() kids=() deadline
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        is_our_child "$pid" || continue
        ours+=("$pid")
        mapfile -t -O "${#kids[@]}" kids < <(descendants "$pid")
    done
    for pid in "${ours[@]}" "${kids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 10))
    for pid in "${ours[@]}" "${kids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    for pid in "${ours[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ $PIN == 1 ]] && (($(nproc) >= 2)); then
    PROXY_CPUS=(taskset -c 0)
    CLIENT_CPUS=1
    PINNING="proxy on CPU 0; nginx back end and the load generator on CPU 1 (taskset)"
else
    PROXY_CPUS=()
    CLIENT_CPUS=""
    PINNING="none (PIN=0 or fewer than 2 CPUs)"
fi
CLIENT_PIN=()
[[ -n $CLIENT_CPUS ]] && CLIENT_PIN=(taskset -c "$CLIENT_CPUS")
if [[ $NICE != 0 ]]; then # everything started from here on inherits it
    if renice -n "$NICE" -p $$ >/dev/null; then
        PINNING+="; all of it at nice $NICE"
    else
        log "could not renice to $NICE: running at the current priority"
    fi
fi

log "scratch directory $TMP"
gcc -O2 -Wall -o "$TMP/loadgen" "$HERE/loadgen.c" -lssl -lcrypto -lpthread

read -r P_BACKEND P_HA_HTTP P_HA_HTTPS P_NG_HTTP P_NG_HTTPS P_DL_HTTP P_DL_HTTPS \
    P_DB_HTTP P_DB_HTTPS < <("$PYTHON" "$HERE/proxybench.py" freeports 9)

# ECDSA P-256, self-signed; certificate and key in one PEM, shared by all three proxies.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/ecdsa.key" -out "$TMP/ecdsa.crt" 2>/dev/null
cat "$TMP/ecdsa.crt" "$TMP/ecdsa.key" > "$TMP/ecdsa.pem"

mkdir -p "$TMP/www" "$TMP/backend" "$TMP/nginx-proxy" "$TMP/dlba-state" "$TMP/dlba-base-state"
head -c 100 /dev/urandom | base64 -w0 | head -c 100 > "$TMP/www/100"
head -c 16384 /dev/urandom | base64 -w0 | head -c 16384 > "$TMP/www/16k"

start() { # NAME CMD...: start in the background, remember the PID
    local name=$1
    shift
    "$@" > "$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    PID_OF[$name]=$!
}

foreground() { # CMD...: run it, but let a signal to this script stop us (and it) at once
    "$@" &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid"
}

wait_http() { # URL SECONDS PID: poll until it answers 200, the process dies, or time runs out
    local url=$1 deadline=$((SECONDS + $2)) pid=$3
    while ((SECONDS < deadline)); do
        kill -0 "$pid" 2>/dev/null || return 1
        [[ $(curl -sk -o /dev/null -m 2 -w '%{http_code}' "$url" || true) == 200 ]] && return 0
        sleep 0.2
    done
    return 1
}

check_proxy() { # NAME HTTP_PORT HTTPS_PORT: the right bytes over both listeners
    local name=$1 url got want
    for url in "http://127.0.0.1:$2" "https://127.0.0.1:$3"; do
        for path in 100 16k; do
            want="200 $(stat -c %s "$TMP/www/$path")"
            got=$(curl -sk -o "$TMP/check.body" -m 5 -w '%{http_code} %{size_download}' "$url/$path" || true)
            if [[ $got != "$want" ]] || ! cmp -s "$TMP/check.body" "$TMP/www/$path"; then
                echo "$url/$path gave '$got', wanted '$want' and the same bytes"
                return 1
            fi
        done
    done
}

# ------------------------------------------------------------------ the back end

cat > "$TMP/backend/nginx.conf" <<EOF
user root;
daemon off;
worker_processes 1;
pid $TMP/backend/nginx.pid;
error_log $TMP/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $TMP/backend/body;
    proxy_temp_path $TMP/backend/proxy;
    fastcgi_temp_path $TMP/backend/fastcgi;
    uwsgi_temp_path $TMP/backend/uwsgi;
    scgi_temp_path $TMP/backend/scgi;
    server {
        listen 127.0.0.1:$P_BACKEND;
        root $TMP/www;
    }
}
EOF
start backend "${CLIENT_PIN[@]}" nginx -p "$TMP/backend" -c "$TMP/backend/nginx.conf" -e "$TMP/backend/error.log"
wait_http "http://127.0.0.1:$P_BACKEND/100" 15 "${PID_OF[backend]}" \
    || die "back end nginx did not start: $(tail -5 "$TMP/backend.log" "$TMP/backend/error.log")"
log "back end nginx on 127.0.0.1:$P_BACKEND (pid ${PID_OF[backend]})"

# ------------------------------------------------------------------ 3. the proxies

start_haproxy() {
    cat > "$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend bench
    bind 127.0.0.1:$P_HA_HTTP
    bind 127.0.0.1:$P_HA_HTTPS ssl crt $TMP/ecdsa.pem ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3 curves X25519:P-256 alpn http/1.1
    default_backend bench
backend bench
    server backend1 127.0.0.1:$P_BACKEND
EOF
    haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy rejects its config"
    start haproxy "${PROXY_CPUS[@]}" haproxy -db -f "$TMP/haproxy.cfg"
}

start_nginx() {
    local d=$TMP/nginx-proxy
    cat > "$d/nginx.conf" <<EOF
user root;
daemon off;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8000; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    upstream bench {
        server 127.0.0.1:$P_BACKEND;
        keepalive 32;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$P_NG_HTTP;
        listen 127.0.0.1:$P_NG_HTTPS ssl;
        ssl_certificate $TMP/ecdsa.pem;
        ssl_certificate_key $TMP/ecdsa.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;
        ssl_session_cache shared:SSL:10m;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    nginx -t -q -p "$d" -c "$d/nginx.conf" -e "$d/error.log" || die "nginx rejects its proxy config"
    start nginx "${PROXY_CPUS[@]}" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
}

start_dlba() { # NAME SRC HTTP_PORT HTTPS_PORT; returns 1, the reason in DLBA_REASON, when dlba cannot run
    local name=$1 src=$2 http=$3 https=$4 err env=()
    [[ -n $src ]] && env=(env "PYTHONPATH=$src${PYTHONPATH:+:$PYTHONPATH}")
    if ! err=$("${env[@]}" "$PYTHON" -c 'import dlba.tap' 2>&1); then
        DLBA_REASON="dlba.tap does not import yet (the twistd dlba CLI is being built): ${err##*$'\n'}"
        return 1
    fi
    cat > "$TMP/$name.toml" <<EOF
[node]
number = 1
state_dir = "$TMP/$name-state"

[listen]
http = "tcp:$http:interface=127.0.0.1"
https = "tcp:$https:interface=127.0.0.1"

[tls]
certificates = ["$TMP/ecdsa.pem"]

[log]
access_log = ""

[[pool]]
name = "bench"
policy = "round-robin"
max_concurrent = 10000
adaptive = false
backend_keepalive = true

[[pool.backend]]
number = 1
address = "127.0.0.1:$P_BACKEND"
EOF
    start "$name" "${env[@]}" "${PROXY_CPUS[@]}" "$TWISTD" -n --pidfile= dlba --config "$TMP/$name.toml"
}

checkout() { # VAR REV DIR: the short hash of REV in VAR, its tree (git archive) in DIR
    local -n short=$1
    short=$(git -C "$REPO" rev-parse --short "$2^{commit}") || die "$1=$2 is not a commit of $REPO"
    mkdir -p "$3"
    git -C "$REPO" archive "$short" | tar -x -C "$3"
}

DLBA_REASON=""
DLBA_SRC=""
[[ $DLBA_FROM_TREE == 1 ]] && DLBA_SRC=$REPO
if [[ -n $DLBA_REV ]]; then
    DLBA_SRC=$TMP/current
    checkout DLBA_REV "$DLBA_REV" "$DLBA_SRC"
fi
BASE_SRC=""
BASE_CODE=""
if [[ -n $DLBA_BASE ]]; then
    BASE_SRC=$TMP/base
    checkout BASE_CODE "$DLBA_BASE" "$BASE_SRC"
    PROXIES+=" dlba-base"
fi

SKIPPED=()
BENCH_PROXIES=()
for proxy in $PROXIES; do
    case $proxy in
        haproxy) start_haproxy; ports=("$P_HA_HTTP" "$P_HA_HTTPS") ;;
        nginx) start_nginx; ports=("$P_NG_HTTP" "$P_NG_HTTPS") ;;
        dlba | dlba-base)
            if [[ $proxy == dlba ]]; then
                ports=("$P_DL_HTTP" "$P_DL_HTTPS") src=$DLBA_SRC
            else
                ports=("$P_DB_HTTP" "$P_DB_HTTPS") src=$BASE_SRC
            fi
            if ! start_dlba "$proxy" "$src" "${ports[@]}"; then
                log "$proxy skipped: $DLBA_REASON"
                SKIPPED+=(--skipped "$proxy=$DLBA_REASON")
                continue
            fi
            ;;
        *) die "unknown proxy '$proxy' (haproxy, nginx, dlba; DLBA_BASE adds dlba-base)" ;;
    esac
    pid=${PID_OF[$proxy]}
    if ! wait_http "http://127.0.0.1:${ports[0]}/100" 30 "$pid" \
        || ! wait_http "https://127.0.0.1:${ports[1]}/100" 10 "$pid"; then
        reason="did not come up on 127.0.0.1:${ports[0]}/${ports[1]}: $(tail -3 "$TMP/$proxy.log" | tr '\n' ' ')"
        [[ $proxy == dlba* ]] || die "$proxy $reason"
        log "$proxy skipped: $reason"
        SKIPPED+=(--skipped "$proxy=$reason")
        continue
    fi
    if ! reason=$(check_proxy "$proxy" "${ports[@]}"); then
        [[ $proxy == dlba* ]] || die "$proxy: $reason"
        log "$proxy skipped: $reason"
        SKIPPED+=(--skipped "$proxy=$reason")
        continue
    fi
    log "$proxy on 127.0.0.1:${ports[0]} (http) and :${ports[1]} (https), pid $pid"
    BENCH_PROXIES+=(--proxy "$proxy:$pid:${ports[0]}:${ports[1]}")
done
((${#BENCH_PROXIES[@]})) || die "no proxy to measure"

# ------------------------------------------------------------------ 4-5. measure

log "measuring: ${DURATION}s runs × $RUNS, warm-up ${WARMUP}s; $PINNING"
foreground "$PYTHON" "$HERE/proxybench.py" bench --out "$TMP/results.jsonl" "${BENCH_PROXIES[@]}" \
    --duration "$DURATION" --runs "$RUNS" --openloop-runs "$OL_RUNS" --warmup "$WARMUP" \
    --wrk-threads "$WRK_THREADS" --wrk-conns "$WRK_CONNS" --tls-clients "$TLS_CLIENTS" \
    --rate "$RATE" --rate-conns "$RATE_CONNS" --tls-rate "$TLS_RATE" --client-cpus "$CLIENT_CPUS" \
    --loadgen "$TMP/loadgen" ${WORKLOADS:+--workloads "$WORKLOADS"}

# ------------------------------------------------------------------ 6. report

STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$HERE/out"
cp "$TMP/results.jsonl" "$HERE/out/$STAMP.jsonl"
SETUP="Saturated (closed loop): wrk -t$WRK_THREADS -c$WRK_CONNS --latency. Full handshakes: bench/loadgen tlsnew, $TLS_CLIENTS clients, one request per new TLS connection, never resumed (fixed rate: paced at $TLS_RATE/s). Fixed rate (open loop): bench/loadgen rate, $RATE req/s over $RATE_CONNS keep-alive connections (HTTPS: -s, handshakes before the schedule starts), latency from the scheduled send time. CPU/request: proxy utime+stime from /proc/PID/stat over the run ÷ requests completed."
DLBA_CODE="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$REPO" diff --quiet HEAD -- dlba 2>/dev/null || DLBA_CODE+=" + uncommitted changes in dlba/"
[[ $DLBA_FROM_TREE == 1 ]] || DLBA_CODE="the installed copy"
[[ -n $DLBA_REV ]] && DLBA_CODE=$DLBA_REV
META=$("$PYTHON" -c 'import json, sys; print(json.dumps({k: v for k, v in zip(["runs", "openloop_runs", "duration", "warmup", "setup", "pinning", "load", "dlba code", "base"], sys.argv[1:]) if v}))' \
    "$RUNS" "$OL_RUNS" "$DURATION" "$WARMUP" "$SETUP" "$PINNING" "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" "$DLBA_CODE" "$BASE_CODE")
"$PYTHON" "$HERE/proxybench.py" report "$TMP/results.jsonl" "${SKIPPED[@]}" \
    --md "$HERE/out/$STAMP.md" --meta "$META" --python "$PYTHON"
log "written: bench/out/$STAMP.md (and the raw runs in bench/out/$STAMP.jsonl)"

if [[ -n $PROFILE ]]; then
    for spec in "${BENCH_PROXIES[@]}"; do
        [[ $spec == dlba* ]] || continue # the --proxy flags and their values alternate
        log "profiling ${spec%%:*} under: $PROFILE"
        foreground "$PYTHON" "$HERE/proxybench.py" profile --proxy "$spec" --workloads "$PROFILE" \
            --out "$HERE/out/$STAMP-profile" --duration "$DURATION" \
            --wrk-threads "$WRK_THREADS" --wrk-conns "$WRK_CONNS" --tls-clients "$TLS_CLIENTS" \
            --rate "$RATE" --rate-conns "$RATE_CONNS" --tls-rate "$TLS_RATE" \
            --client-cpus "$CLIENT_CPUS" --loadgen "$TMP/loadgen"
    done
    log "profiles: bench/out/$STAMP-profile/"
fi
