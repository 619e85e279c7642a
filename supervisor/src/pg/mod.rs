//! How the daemon connects to PostgreSQL, for the job board (`board/`) and for a store kept
//! there (`store/postgres.rs`) alike: TLS off unless asked and always verified when asked
//! ([`tls`]), and a URL as messages show it, without its password ([`redact`]).

pub mod redact;
pub mod tls;
