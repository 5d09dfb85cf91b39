//! Test support: Debian's `docker-registry` on a free port of 127.0.0.1, optionally with
//! htpasswd basic auth, its log kept (to count PUTs) and its storage folder reachable (to tamper
//! with a blob). Stopped and removed on drop.
//! Test support (to come).
