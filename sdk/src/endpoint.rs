//! Where the main connection goes: a TCP `host:port` (resolved on every connect, so a restarted
//! server on a new address is found) or a Unix socket path.

use std::fmt;
#[cfg(unix)]
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Tcp(String),
    #[cfg(unix)]
    Unix(PathBuf),
}

impl Endpoint {
    /// Shard ports are TCP ports on the main connection's host, so only TCP endpoints can route
    /// by shard.
    pub(crate) fn can_route_by_shard(&self) -> bool {
        matches!(self, Endpoint::Tcp(_))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => f.write_str(addr),
            #[cfg(unix)]
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}
