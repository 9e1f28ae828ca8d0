# Shared by the perf scripts here (sourced, not run).

# nginx_conf FILE DIR SERVER_BLOCK: a one-worker nginx config with its pid, logs and temp files
# under DIR, access logging off and keep-alive as long as the load tools need.
nginx_conf() {
  cat > "$1" <<CONF
daemon off;
worker_processes 1;
pid $2/nginx-$(basename "$1" .conf).pid;
error_log $2/logs/$(basename "$1" .conf).log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path $2/tmp/body;
    proxy_temp_path $2/tmp/proxy;
    fastcgi_temp_path $2/tmp/fastcgi;
    uwsgi_temp_path $2/tmp/uwsgi;
    scgi_temp_path $2/tmp/scgi;
$3
}
CONF
}

# static_origin FILE DIR PORT [EXTRA_LOCATIONS]: an origin serving DIR/htdocs on 127.0.0.1:PORT,
# everything cacheable for an hour.
static_origin() {
  nginx_conf "$1" "$2" "    server {
        listen 127.0.0.1:$3;
        root $2/htdocs;
        location / { add_header Cache-Control \"public, max-age=3600\"; }
        ${4:-}
    }"
}

# onair_conf FILE STATE_DIR ORIGIN_PORT LISTEN_KEYS [SECTIONS]: a one-worker onair config, no
# access log, one catch-all site on one origin at 127.0.0.1:ORIGIN_PORT. LISTEN_KEYS go under
# [listen]; SECTIONS (e.g. [protect], [tls]) go before the site.
onair_conf() {
  cat > "$1" <<CONF
[node]
id = "edge-perf"
threads = 1
grace_period = "1s"
state_dir = "$2"
[listen]
$4
[log]
access = "off"
${5:-}
[[site]]
name = "portal"
hosts = ["*"]
pool = "origin"
[[pool]]
name = "origin"
  [[pool.origin]]
  addr = "127.0.0.1:$3"
CONF
}
