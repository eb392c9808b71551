//! glare: peer-to-peer WebRTC without caring who calls whom.
//!
//! This facade will tie the broker client, the negotiator and the transport together
//! (`Peer`, `Connection`, `DataChannel`); today it re-exports the parts that exist:
//! the broker ([`broker`]), its client ([`client`]) and the wire types ([`proto`]).
//! The `glare` binary is the command line of `CLI.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use glare_broker as broker;
pub use glare_client as client;
pub use glare_proto as proto;
