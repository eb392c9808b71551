//! SDP inspection for the negotiator.

/// The ICE ufrag (`a=ice-ufrag`) of an SDP: the first one, session- or media-level.
///
/// It names the ICE generation a description starts (PROTOCOL.md §3).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|line| line.trim_end_matches('\r').strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
}
