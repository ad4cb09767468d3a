//! How a client connects and behaves: its name in HELLO, timeouts, shard-aware routing and the
//! retry policy. Built fluently and consumed by `connect`.

use std::time::Duration;

#[cfg(unix)]
use std::path::Path;

use tally_proto::ErrorCode;

use crate::client::Client;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::limits::{CLIENT_NAME_BYTES_MAX, CONNECT_TIMEOUT_DEFAULT_MS, READ_TIMEOUT_DEFAULT_MS};
use crate::retry::RetryPolicy;

/// Connection options. `ClientOptions::new().client_name("billing").connect("host:7400")`.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(crate) client_name: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) shard_aware: Option<bool>,
    pub(crate) retry: RetryPolicy,
    pub(crate) attach_keys: bool,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            client_name: String::from("tally-sdk"),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_DEFAULT_MS),
            read_timeout: Some(Duration::from_millis(READ_TIMEOUT_DEFAULT_MS)),
            shard_aware: None,
            retry: RetryPolicy::none(),
            attach_keys: false,
        }
    }
}

impl ClientOptions {
    pub fn new() -> ClientOptions {
        ClientOptions::default()
    }

    /// The name the server shows for this client in STATS and audit records (at most 255 bytes).
    pub fn client_name(mut self, name: impl Into<String>) -> ClientOptions {
        self.client_name = name.into();
        self
    }

    /// How long a connect may take (default 5 s). Must not be zero.
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for a reply, and for a write to drain (default 5 s); `None` waits forever.
    /// A timeout drops the connection, because a late reply would otherwise answer the wrong
    /// request; the op's outcome is unknown (`Error::Timeout`).
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> ClientOptions {
        self.read_timeout = timeout;
        self
    }

    /// Send each op straight to the shard that owns its counter over one extra connection per
    /// shard (the blocking client only). Default: on for TCP, off for Unix sockets, whose server has
    /// no per-shard sockets. Turning it off sends everything to the main port, which forwards.
    pub fn shard_aware(mut self, on: bool) -> ClientOptions {
        self.shard_aware = Some(on);
        self
    }

    /// Retry ops that are idempotent as they stand (reads, CREATE, writes that carry a key) after a
    /// connection error or timeout, reconnecting first. See the `retry` module for the rules.
    pub fn retry(mut self, policy: RetryPolicy) -> ClientOptions {
        self.retry = policy;
        self.attach_keys = false;
        self
    }

    /// Like `retry`, and also attach a random idempotency key to every INCR and ADD_BOUNDED that
    /// has none, so a write retried after a lost ack counts exactly once. CAS and RESET are still
    /// never retried.
    pub fn retry_writes(mut self, policy: RetryPolicy) -> ClientOptions {
        self.retry = policy;
        self.attach_keys = true;
        self
    }

    /// Connects to a server's main TCP port (`host:port`) and performs HELLO.
    pub fn connect(self, addr: &str) -> Result<Client, Error> {
        self.check()?;
        Client::open(self, Endpoint::Tcp(addr.to_owned()))
    }

    /// Connects to a server's Unix socket and performs HELLO.
    #[cfg(unix)]
    pub fn connect_unix(self, path: impl AsRef<Path>) -> Result<Client, Error> {
        self.check()?;
        Client::open(self, Endpoint::Unix(path.as_ref().to_path_buf()))
    }

    /// Connects the async client to a server's main TCP port and performs HELLO.
    #[cfg(feature = "tokio")]
    pub async fn connect_async(self, addr: &str) -> Result<crate::AsyncClient, Error> {
        self.check()?;
        crate::AsyncClient::open(self, Endpoint::Tcp(addr.to_owned())).await
    }

    /// Connects the async client to a server's Unix socket and performs HELLO.
    #[cfg(all(feature = "tokio", unix))]
    pub async fn connect_unix_async(self, path: impl AsRef<Path>) -> Result<crate::AsyncClient, Error> {
        self.check()?;
        crate::AsyncClient::open(self, Endpoint::Unix(path.as_ref().to_path_buf())).await
    }

    /// True if ops should be routed by shard on `endpoint`.
    pub(crate) fn routes_by_shard(&self, endpoint: &Endpoint) -> bool {
        endpoint.can_route_by_shard() && self.shard_aware.unwrap_or(true)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.client_name.len() > CLIENT_NAME_BYTES_MAX {
            return Err(Error::refused(
                ErrorCode::InvalidArgument,
                format!(
                    "client name of {} bytes exceeds {CLIENT_NAME_BYTES_MAX}",
                    self.client_name.len()
                ),
            ));
        }
        if self.connect_timeout.is_zero() || self.read_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::refused(ErrorCode::InvalidArgument, "timeouts must not be zero"));
        }
        if self.retry.attempts == 0 {
            return Err(Error::refused(
                ErrorCode::InvalidArgument,
                "a retry policy needs at least one attempt",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_refused_before_connecting() {
        let long = ClientOptions::new().client_name("c".repeat(CLIENT_NAME_BYTES_MAX + 1));
        assert_eq!(long.check().unwrap_err().error_code(), Some(ErrorCode::InvalidArgument));
        let zero = ClientOptions::new().read_timeout(Some(Duration::ZERO));
        assert!(zero.check().is_err());
        let no_tries = ClientOptions::new().retry(RetryPolicy::new(0, Duration::ZERO));
        assert!(no_tries.check().is_err());
        assert!(ClientOptions::new().check().is_ok());
    }

    #[test]
    fn shard_routing_defaults_to_tcp_only() {
        let tcp = Endpoint::Tcp("127.0.0.1:1".into());
        assert!(ClientOptions::new().routes_by_shard(&tcp));
        assert!(!ClientOptions::new().shard_aware(false).routes_by_shard(&tcp));
        #[cfg(unix)]
        {
            let unix = Endpoint::Unix("/tmp/x.sock".into());
            assert!(!ClientOptions::new().shard_aware(true).routes_by_shard(&unix));
        }
    }

    #[test]
    fn retry_writes_attaches_keys_and_retry_does_not() {
        let options = ClientOptions::new().retry_writes(RetryPolicy::default());
        assert!(options.attach_keys);
        assert_eq!(options.retry, RetryPolicy::default());
        assert!(!options.retry(RetryPolicy::default()).attach_keys);
    }
}
