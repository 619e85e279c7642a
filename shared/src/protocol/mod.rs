//! The wire protocol: length-prefixed postcard frames ([`codec`]) carrying the messages between
//! the supervisor and a conductor ([`conductor`]), and between the CLI and the daemon
//! ([`client`]).
//!
//! # Versions
//!
//! Every connection opens with a hello that carries the sender's [`PROTOCOL_VERSION`]. Both
//! ends accept a peer that speaks any version from [`MIN_PROTOCOL_VERSION`] to their own, and
//! then both speak the lower of the two ([`negotiate`]); the messages of an older version are
//! decoded and encoded through their wire mirrors ([`v1`]). So a conductor that outlives an
//! upgrade of the supervisor, or a custom conductor built against the previous release, still
//! works. The hellos themselves never change layout: their version is their first field.

pub mod client;
pub mod codec;
pub mod conductor;
pub mod operator;
pub mod v1;
pub mod v2;
pub mod v3;

/// This build's version; bumped on every incompatible change of any message.
/// Version 2: `TaskSpec::revert_timeout`, and prior results in frames of their own
/// (`ToConductor::PriorResult`). Version 3: `TaskSpec::revert_retries` and
/// `revert_retry_delay`, `JobSpec::hooks` ([`v2`] mirrors version 2). Version 4: flows
/// (`JobSpec::flow`, `max_parallel`, `on_failure`, `TaskSpec::after`, `retry_delay`,
/// `retry_backoff`; [`v3`] mirrors version 3). Version 5: the lease delegated to conductors
/// (`ToConductor::Fence`, `JobEvent::Fenced`, both appended: version 4 has the same layout
/// without them, and a version 4 peer never receives them); `ClientRequest::SubmitOnBoard`
/// (`submit --host`, appended likewise, never sent to a version 4 daemon). Version 6: the
/// resume plan (`PlanAction::Resume`, appended: version 5 has the same layout without it, and
/// a version 5 peer never receives it). Version 7: other hosts' job changes in `events`
/// (`ClientReply::HostedEvent`, appended), and a `Done` in that stream after a gap; a version 6
/// client gets neither (the conductor's messages are version 6's). Version 8: `status` of
/// another host's job with its tasks from the board's journal (`ClientReply::BoardStatus`,
/// appended; a version 7 client gets `HostedStatus`), and a prune of more jobs than one frame
/// lists (`ClientReply::PrunedMany`, appended; a version 7 client gets an error). Version 9:
/// `status` of another host's job asked of that host (`ClientRequest::StatusFromHost`,
/// answered with `ClientReply::OwnerStatus`, both appended; a version 8 daemon is never sent
/// the request, and the CLI asks it `Status` instead).
pub const PROTOCOL_VERSION: u32 = 9;

/// The oldest version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// The version to speak with a peer that announced `peer`: the lower of the two, or `None` when
/// the peer's is older than [`MIN_PROTOCOL_VERSION`].
#[must_use]
pub const fn negotiate(peer: u32) -> Option<u32> {
    if peer < MIN_PROTOCOL_VERSION {
        None
    } else if peer < PROTOCOL_VERSION {
        Some(peer)
    } else {
        Some(PROTOCOL_VERSION)
    }
}

/// The versions this build speaks, for error messages ("1..=3").
#[must_use]
pub fn supported_versions() -> String {
    format!("{MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_version_wins_within_the_supported_range() {
        assert_eq!(negotiate(0), None);
        assert_eq!(negotiate(MIN_PROTOCOL_VERSION), Some(MIN_PROTOCOL_VERSION));
        assert_eq!(negotiate(PROTOCOL_VERSION), Some(PROTOCOL_VERSION));
        assert_eq!(negotiate(PROTOCOL_VERSION + 5), Some(PROTOCOL_VERSION));
        assert_eq!(supported_versions(), "1..=9");
    }
}
