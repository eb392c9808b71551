//! The `glare peer`/`send`/`recv`/`demo` commands.

pub(crate) mod demo;
pub(crate) mod peer;
