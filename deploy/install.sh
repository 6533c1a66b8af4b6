#!/bin/bash
# Turn a fresh Debian 12 / Ubuntu LTS VM into modelstack on port 80, serving this checkout.
# Idempotent: run it again after `git pull` or after editing /etc/modelstack/env.
#
#   sudo deploy/install.sh                                         install or update
#   sudo DOMAIN=example.org EMAIL=me@example.org deploy/install.sh   ... with HTTPS (Let's Encrypt)
#   deploy/install.sh --root DIR    write every file under DIR instead of /, and print the
#                                   commands that would change the system instead of running them
#
# What it does (the README's "On a VM" section has the operator's view):
#   - Debian packages, only those missing: nginx, gcc, python3-dev, python3-venv (scripts/setup.sh),
#     curl, and certbot with DOMAIN and EMAIL
#   - system user modelstack (no shell, no home); nginx's www-data joins its group for the socket
#   - APP_DIR, the checkout, served in place: owned by root, readable by group modelstack only;
#     the venv APP_DIR/.venv is built with the system python3 by scripts/setup.sh
#   - /etc/modelstack/env (640 root:modelstack): the stack's knobs, from deploy/env.example;
#     written when missing, afterwards only merged, never overwriting an edit
#   - /etc/modelstack/api_keys (640 root:modelstack), named by API_KEYS_FILE in the env file: the
#     keys the JSON API requires. On the first run one key is generated (32 random bytes from the
#     kernel's CSPRNG); the script says where it is and never prints it, because cloud-init keeps
#     this output in /var/log/cloud-init-output.log. Read it with: sudo cat /etc/modelstack/api_keys
#   - /etc/systemd/system/modelstack.service (from deploy/systemd/): uWSGI as user modelstack
#   - /etc/nginx/sites-available/modelstack.conf, rendered by `deploy/stack.py render --site-only`
#     from the same template as everywhere else; enabled, Debian's default site disabled
#   - with DOMAIN and EMAIL: a certificate via certbot's webroot, renewed by certbot's timer,
#     with a deploy hook that reloads nginx
#   - with MONITORING=1 (kept in the env file, so reruns keep it up to date):
#     Prometheus and the node and nginx exporters (Debian packages) with deploy/prometheus/'s
#     config and rules and loopback targets; Grafana from Grafana's own apt repository
#     (apt.grafana.com, not in Debian or Ubuntu: a separate step, MONITORING_GRAFANA=0 skips it)
#     with deploy/grafana/'s datasource and dashboards and a generated admin password in
#     /etc/modelstack/grafana.env. Everything listens on 127.0.0.1 only (open it through an SSH
#     or SSM tunnel); with MONITORING_CIDR, Prometheus (9090) and Grafana (3000) listen on all
#     addresses and the firewall (the security group) must admit only that range.
#
# Environment (all optional):
#   APP_DIR         the checkout to serve (default: the one this script is in); not under /home
#                   or /root, which the service cannot see (clone to /opt/modelstack)
#   DOMAIN, EMAIL   the site's name; with EMAIL also a Let's Encrypt certificate
#   any knob documented in deploy/env.example, e.g. TRUSTED_PROXIES (an ALB in front),
#                   WORKERS, RATE_LIMIT: written into /etc/modelstack/env
#   API_KEYS        "key1 key2" (comma or space separated, 16+ characters each): replace the
#                   keys in the key file with these; "off": no keys, the JSON API answers anyone.
#                   Unset: keep what is there (or generate a key on the first run)
#   MONITORING=1, MONITORING_GRAFANA=0, MONITORING_CIDR=203.0.113.0/24   see deploy/env.example
set -euo pipefail
umask 022

APP_DIR=${APP_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
VENV=$APP_DIR/.venv
SERVICE=modelstack
ENV_FILE=/etc/modelstack/env
UNIT=/etc/systemd/system/modelstack.service
SITE=/etc/nginx/sites-available/modelstack.conf
# Fixed here and in the unit, which gives uWSGI the same RUN_DIR, APP_SOCKET and APP_SOCKET_MODE
# (and runs uWSGI, so nginx speaks APP_PROTOCOL's default, uwsgi). The env file may not set them:
# systemd would let it override the unit.
RUN_DIR=/run/modelstack
APP_SOCKET=$RUN_DIR/uwsgi.sock
CERTBOT_WEBROOT=/var/www/certbot
KEY_FILE=/etc/modelstack/api_keys
FIXED_KEYS="RUN_DIR APP_SOCKET APP_SOCKET_MODE APP_PROTOCOL CERTBOT_WEBROOT"

# Read once, then out of the environment every command of this script inherits.
GIVEN_KEYS=${API_KEYS:-}
unset API_KEYS
DEST=""        # --root DIR: files go under DIR, system commands are only printed
STEP="start"
TLS_FAILED=""

say() { STEP=$*; printf '\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
on_exit() {
    local status=$?
    [ "$status" -eq 0 ] || printf 'install.sh: FAILED (exit %s) during: %s\n' "$status" "$STEP" >&2
}
trap on_exit EXIT

# A command that changes the system: printed under --root, run otherwise.
run() {
    if [ -n "$DEST" ]; then
        info "would run: $*"
    else
        info "+ $*"
        "$@"
    fi
}

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --root) [ $# -ge 2 ] || die "--root needs a folder"; DEST=$(realpath -m "$2"); shift 2 ;;
            -h|--help) usage; exit 0 ;;
            *) die "unknown argument: $1 (see --help)" ;;
        esac
    done
}

preflight() {
    say "checking the machine"
    [ -n "${EMAIL:-}" ] && [ -z "${DOMAIN:-}" ] && die "EMAIL is only used with DOMAIN"
    # systemd and nginx take these paths unquoted.
    case $APP_DIR in
        *[!A-Za-z0-9._/-]*) die "APP_DIR=$APP_DIR: use a path of letters, digits and . _ - /" ;;
        /home/*|/root/*|/run/user/*) die "APP_DIR=$APP_DIR: the service cannot see /home or /root (ProtectHome); clone to /opt/modelstack" ;;
    esac
    [ -f "$APP_DIR/deploy/stack.py" ] || die "APP_DIR=$APP_DIR is not a modelstack checkout"
    if [ -n "$DEST" ]; then
        [ -x "$VENV/bin/python" ] || die "--root renders with $VENV: run scripts/setup.sh first"
        info "--root $DEST: writing files there, changing nothing else"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
    command -v apt-get >/dev/null || die "needs a Debian or Ubuntu machine (apt-get)"
    [ -d /run/systemd/system ] || die "needs systemd as init"
    info "serving the checkout $APP_DIR"
}

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

apt_install() {
    local missing=() package
    for package in "$@"; do
        package_installed "$package" || missing+=("$package")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    info "installing Debian packages: ${missing[*]}"
    run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # confold: configuration this script wrote before the package existed stays (the monitoring
    # daemons start as soon as they are installed, and must never listen beyond 127.0.0.1).
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
}

install_packages() {
    say "packages and the Python environment ($VENV)"
    apt_install curl
    # nginx, gcc, python3-dev, python3-venv and the venv; the system python3, which the service
    # user can run (a python under /root or /home could not be).
    run env PYTHON=/usr/bin/python3 VENV="$VENV" "$APP_DIR/scripts/setup.sh"
}

create_user() {
    say "service user $SERVICE"
    if getent passwd "$SERVICE" >/dev/null; then
        info "exists"
    else
        run useradd --system --user-group --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "modelstack model server" "$SERVICE"
    fi
    # nginx's workers reach the uWSGI socket (mode 660) through the group.
    if id -nG www-data 2>/dev/null | tr ' ' '\n' | grep -qx "$SERVICE"; then
        info "www-data is in group $SERVICE"
    else
        run usermod --append --groups "$SERVICE" www-data
    fi
}

secure_checkout() {
    say "permissions of $APP_DIR"
    # The service must not be able to change its own code; other local users need not read it.
    run chown -R "root:$SERVICE" "$APP_DIR"
    run chmod -R u+rwX,g+rX,g-w,o-rwx "$APP_DIR"
    if [ -n "$DEST" ]; then
        return
    fi
    local output
    # Imports the app as the service user does: the venv's python, the checkout, its packages.
    output=$(with_service_env runuser -u "$SERVICE" -- "$VENV/bin/python" "$APP_DIR/deploy/stack.py" --help 2>&1) \
        || die "user $SERVICE cannot run the app with $VENV/bin/python (a folder above APP_DIR closed to others, or a venv from another python: remove $VENV and rerun):
$output"
    runuser -u www-data -- test -r "$APP_DIR/app/web/static" \
        || die "nginx (www-data) cannot read $APP_DIR/app/web/static: open the folders above APP_DIR (chmod o+x)"
    info "readable by $SERVICE and www-data, writable by root only"
}

# -- /etc/modelstack/env ---------------------------------------------------------------

# The knobs deploy/env.example documents, commented out or not.
knob_names() {
    sed -En 's/^(# ?)?([A-Z][A-Z0-9_]*)=.*/\2/p' "$APP_DIR/deploy/env.example"
}

# The env file as systemd reads it: KEY=value lines, quotes removed, comments skipped.
read_env_file() {
    local line key value
    while IFS= read -r line || [ -n "$line" ]; do
        case $line in ''|'#'*) continue ;; esac
        key=${line%%=*}
        value=${line#*=}
        case $key in
            ''|[0-9]*|*[!A-Za-z0-9_]*) die "$ENV_FILE: '$line' is not KEY=value" ;;
        esac
        case " $FIXED_KEYS " in
            *" $key "*) die "$ENV_FILE: $key is fixed by the unit and this script; remove that line" ;;
        esac
        case $value in
            \"*\") value=${value#\"}; value=${value%\"} ;;
            \'*\') value=${value#\'}; value=${value%\'} ;;
        esac
        printf '%s=%s\n' "$key" "$value"
    done < "$DEST$ENV_FILE"
}

env_value() {  # the effective value of one knob, empty when unset
    read_env_file | sed -n "s/^$1=//p" | tail -n 1
}

# Set KEY=VALUE: replace the active line, else the documented commented one, else append.
set_env() {
    local key=$1 value=$2 file=$DEST$ENV_FILE line tmp
    case $value in
        *[\"\'\\\$\`]*) die "$key: quotes, backslashes, \$ and backticks are not allowed in values" ;;
        *[[:space:]]*) line="$key=\"$value\"" ;;
        *) line="$key=$value" ;;
    esac
    tmp=$(mktemp "$file.XXXXXX")
    KEY=$key LINE=$line awk '
        { lines[NR] = $0 }
        index($0, ENVIRON["KEY"] "=") == 1 { active[NR] = 1; any_active = 1 }
        index($0, "# " ENVIRON["KEY"] "=") == 1 && !commented { commented = NR }
        END {
            for (i = 1; i <= NR; i++) {
                if (active[i] || (!any_active && i == commented)) {
                    if (!done) print ENVIRON["LINE"]
                    done = 1
                } else print lines[i]
            }
            if (!done) print ENVIRON["LINE"]
        }' "$file" > "$tmp"
    if cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
    else
        chown --reference="$file" "$tmp"
        chmod 640 "$tmp"
        mv "$tmp" "$file"
        info "set $line"
    fi
}

write_env_file() {
    say "environment $ENV_FILE"
    local file=$DEST$ENV_FILE key value missing=()
    install -d -m 750 "$(dirname "$file")"
    if [ ! -f "$file" ]; then
        install -m 640 "$APP_DIR/deploy/env.example" "$file"
        info "written from deploy/env.example"
    else
        for key in $(knob_names); do
            grep -Eq "^#? *$key=" "$file" || missing+=("$key")
        done
        if [ ${#missing[@]} -gt 0 ]; then
            {
                printf '\n# Added by deploy/install.sh on %s (documented in deploy/env.example):\n' "$(date -u +%F)"
                for key in "${missing[@]}"; do
                    grep -E "^#? *$key=" "$APP_DIR/deploy/env.example"
                done
            } >> "$file"
            info "added new knobs: ${missing[*]}"
        else
            info "kept as it is (no new knobs)"
        fi
    fi
    # Knobs given to this script win: cloud-init passes its settings this way.
    for key in $(knob_names); do
        value=$(printenv "$key" || true)
        [ -z "$value" ] || set_env "$key" "$value"
    done
    [ -z "${DOMAIN:-}" ] || set_env SERVER_NAME "$DOMAIN"
    run chown -R "root:$SERVICE" "$(dirname "$file")"
    chmod 750 "$(dirname "$file")"
    chmod 640 "$file"
    read_env_file >/dev/null
}

# Run a command in the service's environment: the fixed paths, then the env file on top
# (the precedence systemd gives Environment= and EnvironmentFile=); nothing from this script's own.
with_service_env() {
    local vars=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 RUN_DIR="$RUN_DIR"
                APP_SOCKET="$APP_SOCKET" CERTBOT_WEBROOT="$CERTBOT_WEBROOT") pair pairs keys
    pairs=$(read_env_file)
    while IFS= read -r pair; do
        if [ -n "$pair" ]; then vars+=("$pair"); fi
    done <<< "$pairs"
    # --root: the app checks the key file this script wrote under DEST.
    keys=$(env_value API_KEYS_FILE)
    if [ -n "$DEST" ] && [ -n "$keys" ]; then vars+=("API_KEYS_FILE=$DEST$keys"); fi
    env -i "${vars[@]}" "$@"
}

# The venv's python in the service's environment; a bad knob ends the run with its own message.
service_python() {
    local errors
    errors=$(mktemp)
    if ! with_service_env "$VENV/bin/python" "$@" 2> "$errors"; then
        die "$(tail -n 1 "$errors") (fix $ENV_FILE and rerun)"
    fi
    rm -f "$errors"
}

# -- API keys ------------------------------------------------------------------------------

# 32 bytes from the kernel's CSPRNG as URL-safe base64 without padding: 43 characters.
new_key() {
    head -c 32 /dev/urandom | base64 -w 0 | tr '+/' '-_' | tr -d '='
}

# The key file API_KEYS_FILE names: the given keys, else the one there, else a new one.
# Keys are never printed: cloud-init keeps this script's output in a log file.
install_api_keys() {
    say "API keys for the JSON API"
    local path file key tmp given keys=()
    if [ "$GIVEN_KEYS" = off ]; then
        set_env API_KEYS_FILE ""
        info "off (API_KEYS=off): the JSON API answers without a key"
        return
    fi
    IFS=$' \t\n' read -r -d '' -a keys <<< "${GIVEN_KEYS//,/ }" || true
    given=${#keys[@]}
    for key in "${keys[@]}"; do
        # The app refuses the same (app/settings.py); '#' would start a comment in the file.
        [[ ${#key} -ge 16 && $key != *[!!-~]* && $key != *"#"* ]] \
            || die "API_KEYS: every key needs 16 or more printable ASCII characters, none of them #"
    done
    path=$(env_value API_KEYS_FILE)
    if [ -z "$path" ] && [ "$given" -gt 0 ]; then
        path=$KEY_FILE
        set_env API_KEYS_FILE "$path"
    fi
    if [ -z "$path" ]; then
        info "off (API_KEYS_FILE is empty in $ENV_FILE): the JSON API answers without a key"
        return
    fi
    file=$DEST$path
    if [ "$given" -gt 0 ] || [ ! -e "$file" ]; then
        [ "$given" -gt 0 ] || keys=("$(new_key)")
        tmp=$(mktemp "$file.XXXXXX")
        {
            cat <<'EOF'
# Keys for the modelstack JSON API, one a line (# starts a comment); from deploy/install.sh.
# Clients send "Authorization: Bearer <key>" or "X-API-Key: <key>". After an edit:
#   sudo systemctl reload modelstack     (workers are replaced one at a time, no request is lost)
EOF
            printf '%s\n' "${keys[@]}"
        } > "$tmp"
        mv "$tmp" "$file"
        if [ "$given" -gt 0 ]; then
            info "wrote the $given given key(s) to $path"
        else
            info "generated a key in $path"
        fi
    else
        info "kept $path"
    fi
    run chown "root:$SERVICE" "$file"
    chmod 640 "$file"
    if [ -z "$DEST" ]; then
        runuser -u "$SERVICE" -- test -r "$path" \
            || die "user $SERVICE cannot read $path: let group $SERVICE into the folders above it"
    fi
    info "clients send Authorization: Bearer <key> or X-API-Key: <key>; read the keys with: sudo cat $path"
}

# -- the uWSGI service and the nginx site ------------------------------------------------

# Copy $1 to $2 with mode $3 unless identical; prints what happened and sets CHANGED when it wrote.
install_file() {
    if cmp -s "$1" "$2"; then
        info "unchanged: $2"
    else
        install -D -m "$3" "$1" "$2"
        info "wrote $2"
        CHANGED=1
    fi
}

install_unit() {
    say "systemd unit $UNIT"
    local stop staged
    # Graceful stops wait for in-flight requests (harakiri) and reloading workers (mercy).
    stop=$(service_python -c '
import sys; sys.path.insert(0, sys.argv[1])
from stack import StackConfig
config = StackConfig()
print(max(config.harakiri, config.worker_reload_mercy) + 15)' "$APP_DIR/deploy")
    staged=$(mktemp)
    sed -e "s|@APP_DIR@|$APP_DIR|g" -e "s|@TIMEOUT_STOP_SEC@|$stop|g" \
        "$APP_DIR/deploy/systemd/modelstack.service" > "$staged"
    install_file "$staged" "$DEST$UNIT" 644
    rm -f "$staged"
    run systemctl daemon-reload
    run systemctl enable --quiet "$SERVICE"
}

install_site() {
    say "nginx site $SITE"
    local staged site=$DEST$SITE enabled=$DEST/etc/nginx/sites-enabled
    staged=$(mktemp -d)
    service_python "$APP_DIR/deploy/stack.py" render --site-only --out "$staged" >/dev/null
    [ -f "$site" ] && cp -p "$site" "$staged/previous.conf"
    install_file "$staged/modelstack.conf" "$site" 644
    install -d "$enabled"
    ln -sfn ../sites-available/modelstack.conf "$enabled/modelstack.conf"
    if [ -e "$enabled/default" ] || [ -L "$enabled/default" ]; then
        rm -f "$enabled/default"
        info "disabled the distribution's default site"
    fi
    if [ -n "$DEST" ]; then
        info "would run: nginx -t"
    elif ! nginx -t -q 2> "$staged/nginx-t.log"; then
        # Leave the running nginx and its config as they were.
        if [ -f "$staged/previous.conf" ]; then cp -p "$staged/previous.conf" "$site"; else rm -f "$site" "$enabled/modelstack.conf"; fi
        die "nginx rejected the rendered site; the previous one is back (fix $ENV_FILE and rerun):
$(cat "$staged/nginx-t.log")"
    fi
    rm -rf "$staged"
    run systemctl enable --quiet nginx
    run systemctl reload-or-restart nginx
}

setup_tls() {
    [ -n "${DOMAIN:-}" ] && [ -n "${EMAIL:-}" ] || return 0
    say "HTTPS for $DOMAIN (Let's Encrypt)"
    local live=/etc/letsencrypt/live/$DOMAIN hook=$DEST/etc/letsencrypt/renewal-hooks/deploy/modelstack-nginx
    apt_install certbot
    install -d -m 755 "$DEST$CERTBOT_WEBROOT" "$(dirname "$hook")"
    # certbot.timer renews; this serves each renewed certificate.
    printf '#!/bin/sh\n# Installed by modelstack deploy/install.sh: serve renewed certificates.\nexec systemctl reload nginx\n' > "$hook"
    chmod 755 "$hook"
    if ! run certbot certonly --webroot --webroot-path "$CERTBOT_WEBROOT" --domains "$DOMAIN" \
        --email "$EMAIL" --agree-tos --no-eff-email --non-interactive --keep-until-expiring; then
        TLS_FAILED="certbot could not get a certificate for $DOMAIN (does its DNS point at this VM, is port 80 open?)"
        info "$TLS_FAILED; serving HTTP only"
        return 0
    fi
    set_env TLS_CERTIFICATE "$live/fullchain.pem"
    set_env TLS_CERTIFICATE_KEY "$live/privkey.pem"
    install_site
}

start_service() {
    say "service $SERVICE"
    if [ -n "$DEST" ]; then
        info "would run: systemctl start, restart or reload $SERVICE"
        return
    fi
    local started newer
    if ! systemctl is-active --quiet "$SERVICE"; then
        systemctl start "$SERVICE"
        info "started"
        return
    fi
    # The master reads its unit, environment and packages only at start; code and models are
    # picked up by a rolling reload.
    started=$(date -d "$(systemctl show -p ExecMainStartTimestamp --value "$SERVICE")" +%s)
    newer=$(find "$UNIT" "$ENV_FILE" "$VENV"/.installed-* -newermt "@$started" 2>/dev/null | head -n 1)
    if [ -n "$newer" ]; then
        systemctl restart "$SERVICE"
        info "restarted ($newer changed)"
    else
        systemctl reload "$SERVICE"
        info "rolling reload started (new code and model versions)"
    fi
}

# The port of the first address in knob $1 (nginx serves the same site on all of them), else $2.
listen_port() {
    local port
    port=$(env_value "$1" | awk '{ n = split($1, part, ":"); print part[n] }')
    echo "${port:-$2}"
}

# Wait up to $2 seconds for URL $1 to answer; $3 says where to look if it never does, curl options follow.
wait_for() {
    local url=$1 seconds=$2 logs=$3
    shift 3
    for _ in $(seq "$seconds"); do
        if curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; then
            info "ready: $url"
            return 0
        fi
        sleep 1
    done
    die "$url did not answer within $seconds s: see $logs"
}

wait_ready() {
    [ -z "$DEST" ] || return 0
    say "waiting for /readyz through nginx"
    local name tls_port url args=()
    name=$(env_value SERVER_NAME)
    tls_port=$(listen_port TLS_LISTEN 443)
    if [ -n "$(env_value TLS_CERTIFICATE)" ]; then
        url="https://${name:-_}:$tls_port/readyz"
        args=(--resolve "${name:-_}:$tls_port:127.0.0.1")
        [ "${name:-_}" != "_" ] || { url="https://127.0.0.1:$tls_port/readyz"; args=(--insecure); }
    else
        url="http://127.0.0.1:$(listen_port LISTEN 80)/readyz"
    fi
    wait_for "$url" 120 "journalctl -u $SERVICE and journalctl -u nginx" "${args[@]}"
}

# -- monitoring (MONITORING=1) --------------------------------------------------------------

GRAFANA_REPOSITORY=https://apt.grafana.com
GRAFANA_KEY=/etc/apt/keyrings/grafana.asc
GRAFANA_LIST=/etc/apt/sources.list.d/grafana.list
GRAFANA_DROP_IN=/etc/systemd/system/grafana-server.service.d/modelstack.conf
GRAFANA_ENV=/etc/modelstack/grafana.env
# Where deploy/grafana/provisioning/dashboards/modelstack.yml looks for the dashboards.
GRAFANA_DASHBOARDS=/etc/grafana/dashboards/modelstack

# Refuse bad monitoring knobs before anything is installed or restarted.
check_monitoring() {
    local knob value cidr
    for knob in MONITORING MONITORING_GRAFANA; do
        value=$(env_value "$knob")
        case $value in
            ''|0|1) ;;
            *) die "$knob=$value: use 0 or 1 (fix $ENV_FILE and rerun)" ;;
        esac
    done
    cidr=$(env_value MONITORING_CIDR)
    [ -n "$cidr" ] || return 0
    [ "$(env_value MONITORING)" = 1 ] || die "MONITORING_CIDR is only used with MONITORING=1 (fix $ENV_FILE and rerun)"
    if ! [[ $cidr =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]{1,2})$ ]] || [ "${BASH_REMATCH[2]}" -gt 32 ]; then
        die "MONITORING_CIDR=$cidr: give one IPv4 range such as 203.0.113.0/24 (fix $ENV_FILE and rerun)"
    fi
    [ "${BASH_REMATCH[2]}" -gt 0 ] \
        || die "MONITORING_CIDR=$cidr would open Prometheus and Grafana to the whole internet: give your own range, or none and use a tunnel (fix $ENV_FILE and rerun)"
}

# /etc/default/$1: the ARGS the Debian package's unit passes to its daemon.
write_args() {
    local name=$1 staged
    shift
    staged=$(mktemp)
    printf '# %s for modelstack, written by deploy/install.sh (MONITORING=1): rerun it, do not edit.\nARGS="%s"\n' \
        "$name" "$*" > "$staged"
    install_file "$staged" "$DEST/etc/default/$name" 644
    rm -f "$staged"
}

# Make folder $2 hold the files of folder $1 and nothing else: the project's, none left over.
mirror_files() {
    local from=$1 to=$2 file
    install -d -m 755 "$to"
    for file in "$from"/*; do
        install_file "$file" "$to/${file##*/}" 644
    done
    for file in "$to"/*; do
        if [ -f "$file" ] && [ ! -e "$from/${file##*/}" ]; then
            rm -f "$file"
            info "removed $file (no longer in the checkout)"
            CHANGED=1
        fi
    done
}

# Enable $1 at boot and have it running: restarted when its files changed ($2 not empty).
start_unit() {
    run systemctl enable --quiet "$1"
    if [ -n "$2" ]; then
        run systemctl restart "$1"
    else
        run systemctl start "$1"
    fi
}

# Prometheus scrapes the app's /metrics and the exporter reads /nginx_status on 127.0.0.1.
check_scrape_paths() {
    [ -z "$DEST" ] || return 0
    local url status
    for url in "http://127.0.0.1:$1/metrics" "http://127.0.0.1:$1/nginx_status"; do
        status=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$url" 2>/dev/null || true)
        [ "$status" = 200 ] \
            || die "nginx answers $status to $url, which Prometheus scrapes: keep 127.0.0.0/8 in METRICS_ALLOW (fix $ENV_FILE and rerun)"
    done
}

# Debian's prometheus, prometheus-node-exporter and prometheus-nginx-exporter with the checkout's
# deploy/prometheus/ and targets on loopback. The files are written before the packages are
# installed: Debian starts each daemon at once, and then already on 127.0.0.1 (see apt_install).
install_prometheus() {
    say "monitoring: Prometheus and the node and nginx exporters"
    local bind=$1 port staged file name address node_changed nginx_changed
    port=$(listen_port LISTEN 80)
    CHANGED=""
    write_args prometheus-node-exporter --web.listen-address=127.0.0.1:9100
    node_changed=$CHANGED
    CHANGED=""
    # Double-dash flags: the Go flag package (0.x, Debian 12) and kingpin (1.x) both read them.
    write_args prometheus-nginx-exporter --web.listen-address=127.0.0.1:9113 \
        "--nginx.scrape-uri=http://127.0.0.1:$port/nginx_status"
    nginx_changed=$CHANGED
    CHANGED=""
    write_args prometheus "--web.listen-address=$bind:9090"
    install_file "$APP_DIR/deploy/prometheus/prometheus.yml" "$DEST/etc/prometheus/prometheus.yml" 644
    mirror_files "$APP_DIR/deploy/prometheus/rules" "$DEST/etc/prometheus/rules"
    # The checkout's targets name the docker-compose services; here everything is on loopback.
    staged=$(mktemp -d)
    for file in "$APP_DIR"/deploy/prometheus/targets/*.yml; do
        name=$(basename "$file" .yml)
        case $name in
            modelstack) address=127.0.0.1:$port ;;  # the app's /metrics, through nginx
            nginx) address=127.0.0.1:9113 ;;
            node) address=127.0.0.1:9100 ;;
            prometheus) address=127.0.0.1:9090 ;;
            *) die "deploy/prometheus/targets/$name.yml: install.sh knows no address for it on a VM" ;;
        esac
        printf '# Written by modelstack deploy/install.sh: the %s job on this VM.\n- targets: ["%s"]\n' \
            "$name" "$address" > "$staged/$name.yml"
    done
    mirror_files "$staged" "$DEST/etc/prometheus/targets"
    rm -rf "$staged"
    apt_install prometheus prometheus-node-exporter prometheus-nginx-exporter
    run promtool check config /etc/prometheus/prometheus.yml
    check_scrape_paths "$port"
    start_unit prometheus-node-exporter "$node_changed"
    start_unit prometheus-nginx-exporter "$nginx_changed"
    start_unit prometheus "$CHANGED"
    [ -n "$DEST" ] || wait_for http://127.0.0.1:9090/-/ready 120 "journalctl -u prometheus"  # replaying its WAL takes a while
}

# Grafana is in neither Debian nor Ubuntu: its own apt repository is the one source here beyond
# the distribution's mirrors. Its key comes over HTTPS and apt trusts it for that repository only.
add_grafana_repository() {
    say "monitoring: Grafana's apt repository $GRAFANA_REPOSITORY"
    local key=$DEST$GRAFANA_KEY staged
    if [ -s "$key" ] && package_installed grafana; then
        info "have its signing key $GRAFANA_KEY"
    else
        install -d -m 755 "$(dirname "$key")"
        staged=$key.download
        if ! run curl -fsSL --proto =https --max-time 60 -o "$staged" "$GRAFANA_REPOSITORY/gpg.key"; then
            rm -f "$staged"
            die "cannot download $GRAFANA_REPOSITORY/gpg.key: Grafana needs outbound HTTPS from this VM to apt.grafana.com; open it and rerun, or go without Grafana: MONITORING_GRAFANA=0 $0"
        fi
        if [ -n "$DEST" ]; then
            rm -f "$staged"
        elif grep -q "BEGIN PGP PUBLIC KEY BLOCK" "$staged"; then
            chmod 644 "$staged"
            mv "$staged" "$key"
            info "wrote its signing key $GRAFANA_KEY"
        else
            rm -f "$staged"
            die "$GRAFANA_REPOSITORY/gpg.key is not an OpenPGP key (a proxy in the way?)"
        fi
    fi
    # Only once the key is there: a source without its key would fail every apt-get update.
    staged=$(mktemp)
    printf '# Grafana from Grafana Labs, added by modelstack deploy/install.sh (MONITORING=1).\ndeb [signed-by=%s] %s stable main\n' \
        "$GRAFANA_KEY" "$GRAFANA_REPOSITORY" > "$staged"
    install_file "$staged" "$DEST$GRAFANA_LIST" 644
    rm -f "$staged"
}

# The admin password Grafana takes when it creates its database: generated once, never printed.
write_grafana_password() {
    local file=$DEST$GRAFANA_ENV
    if [ -e "$file" ]; then
        info "kept $GRAFANA_ENV"
        return
    fi
    (
        umask 077
        {
            printf "# Grafana's first admin password (user admin), generated by modelstack deploy/install.sh.\n"
            printf '# Grafana reads it only when it creates its database; change it in Grafana afterwards.\n'
            printf 'GF_SECURITY_ADMIN_PASSWORD=%s\n' "$(new_key)"
        } > "$file"
    )
    info "generated Grafana's admin password in $GRAFANA_ENV; read it with: sudo cat $GRAFANA_ENV"
}

install_grafana() {
    say "monitoring: Grafana with the checkout's datasource and dashboards"
    local bind=$1 staged
    CHANGED=""
    install_file "$APP_DIR/deploy/grafana/provisioning/datasources/prometheus.yml" \
        "$DEST/etc/grafana/provisioning/datasources/modelstack.yml" 644
    install_file "$APP_DIR/deploy/grafana/provisioning/dashboards/modelstack.yml" \
        "$DEST/etc/grafana/provisioning/dashboards/modelstack.yml" 644
    mirror_files "$APP_DIR/deploy/grafana/dashboards" "$DEST$GRAFANA_DASHBOARDS"
    staged=$(mktemp)
    sed "s|@GRAFANA_HTTP_ADDR@|$bind|g" "$APP_DIR/deploy/systemd/grafana-server.conf" > "$staged"
    install_file "$staged" "$DEST$GRAFANA_DROP_IN" 644
    rm -f "$staged"
    write_grafana_password
    apt_install grafana
    run systemctl daemon-reload
    start_unit grafana-server "$CHANGED"
    [ -n "$DEST" ] || wait_for http://127.0.0.1:3000/api/health 180 "journalctl -u grafana-server"  # first start: database migrations
}

install_monitoring() {
    [ "$(env_value MONITORING)" = 1 ] || return 0
    local bind=127.0.0.1
    # An allow-listed range: Prometheus and Grafana listen everywhere and the security group
    # (terraform's monitoring_cidr) admits that range alone; nothing on this VM filters it.
    [ -z "$(env_value MONITORING_CIDR)" ] || bind=0.0.0.0
    install_prometheus "$bind"
    if [ "$(env_value MONITORING_GRAFANA)" != 0 ]; then
        add_grafana_repository
        install_grafana "$bind"
    fi
}

# How the operator reaches the monitoring from their own machine.
monitoring_help() {
    [ "$(env_value MONITORING)" = 1 ] || return 0
    info "Prometheus: http://127.0.0.1:9090 on this VM; exporters on 127.0.0.1:9100 and 127.0.0.1:9113"
    if [ "$(env_value MONITORING_GRAFANA)" != 0 ]; then
        info "Grafana: http://127.0.0.1:3000, user admin, password: sudo cat $GRAFANA_ENV"
    fi
    if [ -n "$(env_value MONITORING_CIDR)" ]; then
        info "also on this VM's addresses, ports 9090 and 3000: only the firewall keeps out all but $(env_value MONITORING_CIDR)"
    fi
    info "from your machine: ssh -N -L 3000:127.0.0.1:3000 -L 9090:127.0.0.1:9090 <user>@<this VM>, or"
    info "  aws ssm start-session --target <instance id> --document-name AWS-StartPortForwardingSession --parameters '{\"portNumber\":[\"3000\"],\"localPortNumber\":[\"3000\"]}'"
}

main() {
    parse_args "$@"
    preflight
    install_packages
    create_user
    write_env_file
    check_monitoring
    install_api_keys
    secure_checkout
    install_unit
    install_site
    setup_tls
    start_service
    wait_ready
    install_monitoring
    [ -z "$TLS_FAILED" ] || die "$TLS_FAILED; rerun this script to retry"
    say "done"
    if [ -n "$DEST" ]; then
        info "files under $DEST"
    else
        info "modelstack is serving this checkout; logs: journalctl -u $SERVICE, journalctl -t modelstack_nginx"
        monitoring_help
    fi
}

main "$@"
