//! Benchmarks of the vault against the baselines they are judged by (raw RocksDB,
//! later bare axum and PostgreSQL + pgcrypto). The benchmarks are in `benches/`.
