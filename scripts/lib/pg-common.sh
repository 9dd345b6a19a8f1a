# Shared by scripts/postgres and scripts/ha-demo (sourced, not run): finding and
# installing PostgreSQL and friends from Debian, running commands as the clusters'
# owner, and a throwaway certificate authority for TLS on loopback.
#
# The sourcing script defines `say` (a message on stderr, prefixed with its name).

# The newest installed PostgreSQL's bin directory (Debian layout), or nothing.
pg_bin_dir() {
    local initdb
    initdb="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$initdb" ]]; then
        dirname "$initdb"
    fi
}

# install_packages PACKAGE...: installs Debian packages with apt, as root only;
# otherwise says what to install and exits.
install_packages() {
    if [[ "$(id -u)" -ne 0 ]]; then
        say "missing: $*; not root, so not installing it. As root, run:"
        say "  apt-get install -y --no-install-recommends $*"
        exit 1
    fi
    say "installing from Debian: $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# The user that owns the clusters and runs PostgreSQL: postgres when we are root
# (postgres refuses to run as root), else ourselves.
owner_user() {
    if [[ "$(id -u)" -eq 0 ]]; then
        echo postgres
    else
        id -un
    fi
}

# Runs a command as the clusters' owner, in the foreground.
as_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Gives a path to the clusters' owner (no-op unless root).
chown_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        chown -R postgres: "$@"
    fi
}

# make_tls DIR: a throwaway CA (DIR/ca.pem) and a server certificate it signed
# (DIR/server.crt, key DIR/server.key, mode 0600) for IP:127.0.0.1 and
# DNS:localhost, so that clients can verify the server's name against 127.0.0.1
# (sslmode=verify-full, or rustls with DIR/ca.pem as the only root). The CA's key
# is deleted once the certificate is signed: nothing else can be issued under it.
make_tls() {
    local dir="$1"
    mkdir -p "$dir"
    (
        umask 077
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -sha256 \
            -subj "/CN=vault throwaway PostgreSQL CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=localhost" 2>/dev/null
        printf '%s\n' \
            "subjectAltName=IP:127.0.0.1,DNS:localhost" \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" >"$dir/server.ext"
        openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
            -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
            -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
    ) || { say "openssl could not make the TLS certificates"; exit 1; }
    rm -f "$dir/ca.key" "$dir/server.csr" "$dir/server.ext"
    chmod 0644 "$dir/ca.pem" "$dir/server.crt"
    chmod 0600 "$dir/server.key"
}

# may_delete DIR MARK: true when DIR is absent, empty, or marked by MARK (a file the
# script left there when it made DIR): a directory from the environment is never
# deleted unless it is one of ours.
may_delete() {
    local dir="$1" mark="$2"
    [[ ! -e "$dir" ]] && return 0
    [[ -d "$dir" ]] || return 1
    [[ -e "$dir/$mark" ]] && return 0
    [[ -z "$(ls -A "$dir")" ]]
}
