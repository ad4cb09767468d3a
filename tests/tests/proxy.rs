//! The test proxy in front of a real `tallyd` (no replication needed): a `ProxySet` reaches the
//! node's main port and each shard's own port with the node's layout, and its faults act on live
//! protocol connections. The replication tests rely on both.

use std::time::{Duration, Instant};

use tally_proto::{Reply, Request};
use tally_sdk::{ClientOptions, RetryPolicy};
use tally_tests::ports::free_block;
use tally_tests::proxy::ProxySet;
use tally_tests::{DataDir, RawConn, RawReply, Server};

#[test]
fn a_proxy_set_fronts_a_node_with_its_layout_and_its_faults_reach_clients() {
    let port = free_block(3);
    let dir = DataDir::new("proxy-node");
    let listen = format!("127.0.0.1:{port}");
    let server = Server::start_in(dir.0.clone(), &["--listen", &listen, "--shards", "2"]);
    assert_eq!(server.shard_ports, vec![port + 1, port + 2], "tallyd's default layout");
    let set = ProxySet::start(port, &server.shard_ports);

    // Each proxied shard port is served by that shard (HELLO says which one serves a connection).
    for shard in 0..2u16 {
        let mut raw = RawConn::connect(&format!("127.0.0.1:{}", set.base_port() + 1 + shard));
        match raw.call(&[Request::Hello { client: b"proxy-test" }]) {
            RawReply::Ops(ops) => match &ops[0].result {
                Ok(Reply::Hello(hello)) => {
                    assert_eq!(
                        hello.shard,
                        shard,
                        "proxy port {} serves shard {shard}",
                        set.base_port() + 1 + shard
                    );
                    assert_eq!(hello.shard_ports, server.shard_ports);
                }
                other => panic!("HELLO through the proxy: {other:?}"),
            },
            RawReply::Refused { code, message } => panic!("HELLO refused: {code} {message}"),
        }
    }

    // The main port through the proxy. Not shard-aware: HELLO names the node's own shard ports,
    // which would bypass the proxy.
    let mut client = ClientOptions::new()
        .shard_aware(false)
        .retry(RetryPolicy::none())
        .read_timeout(Some(Duration::from_secs(5)))
        .connect(&set.addr().to_string())
        .unwrap();
    assert_eq!(client.incr("px", 2).unwrap(), 2);

    // A cut breaks the connection; nothing sent during it reaches the node.
    set.cut();
    let error = client.incr("px", 1).unwrap_err();
    assert!(error.is_connection(), "{error}");
    assert!(
        client.get("px").unwrap_err().is_connection(),
        "new connections are closed too"
    );
    set.heal();
    assert_eq!(
        client.incr("px", 1).unwrap(),
        3,
        "healed: the client reconnects; the cut write was never applied"
    );

    // A delay of d each way makes a round trip take at least 2d.
    let delay = Duration::from_millis(40);
    set.delay(delay);
    let started = Instant::now();
    assert_eq!(client.get("px").unwrap(), 3);
    assert!(started.elapsed() >= 2 * delay, "took {:?}", started.elapsed());
    set.heal();
    assert!(set.bytes_forwarded() > 0);
    drop(client);
    assert_eq!(server.stop(), Some(0));
}
