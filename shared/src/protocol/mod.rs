//! The wire protocol: length-prefixed postcard frames ([`codec`]) carrying the messages between
//! the supervisor and a conductor ([`conductor`]).

pub mod client;
pub mod codec;
pub mod conductor;

/// Bumped on every incompatible change of any message; checked in every handshake.
pub const PROTOCOL_VERSION: u32 = 1;
